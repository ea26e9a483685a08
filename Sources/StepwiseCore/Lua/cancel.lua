#!lua
-- cancel: a durable mark; queued steps dropped (from the inbox, and the head from `ready`,
-- `delayed` and `parked`); a dead letter discarded; `session.cancelled` appended; a running step
-- announced by its job id on the `cancels` set that workers watch (job ids never repeat, so a
-- later incarnation of the session is never mistaken for this one).
-- KEYS: none (derived).
-- ARGV[1] prefix  ARGV[2] session id  ARGV[3] reason  ARGV[4] now ms  ARGV[5] events maxlen
-- Returns {1, dropped, running job or ''}, or {0, 0, ''} when already cancelled.
-- Errors: STEPWISE invalid_argument | session_not_found.
local P = prefix_arg(ARGV[1])
local sid, reason = ARGV[2], ARGV[3]
need(sid ~= nil and string.match(sid, '^[A-Za-z0-9_%-]+$') ~= nil and #sid <= 64, 'invalid_argument', 'bad session id')
need(reason ~= '' and #reason <= 500, 'invalid_argument', 'reason must be 1-500 bytes')
local now = int_arg(ARGV[4], 'now', 0)
local maxlen = int_arg(ARGV[5], 'maxlen', 1)
local k = session_keys(P, sid)
local s = redis.call('HMGET', k.session, 'agent', 'holder', 'cancelled', 'ttl', 'refreshed', 'exp', 'evlast')
k.evlast = s[7]
if not s[1] then fail('session_not_found', 'session ' .. sid .. ' does not exist (or expired)') end
if s[3] then return {0, 0, ''} end
local ids = redis.call('LRANGE', k.inbox, 0, -1)
local running = ''
if s[2] ~= '' and ids[1] then running = ids[1] end
local dropped = 0
for i, jid in ipairs(ids) do
  if jid ~= running then
    local _, seq = split_job(jid)
    if seq then redis.call('HDEL', k.jobs, job_fields(seq)) end
    if i == 1 then
      -- Only the head is ever dispatched: it may wait in ready, parked or delayed.
      redis.call('LREM', P .. 'ready', 0, jid)
      redis.call('LREM', P .. 'parked', 0, jid)
      redis.call('ZREM', P .. 'delayed', jid)
    end
    dropped = dropped + 1
  end
end
redis.call('DEL', k.inbox)
if running ~= '' then redis.call('RPUSH', k.inbox, running) end
redis.call('HSET', k.session, 'status', 'cancelled', 'cancelled', reason, 'active', now)
redis.call('HDEL', k.session, 'blocked', 'dead_reason', 'dead_error', 'dead_attempts', 'dead_at')
redis.call('ZREM', P .. 'dead', sid)
if running ~= '' then
  local cseq = redis.call('HINCRBY', P .. 'stats', 'cancel_seq', 1)
  redis.call('ZADD', P .. 'cancels', cseq, running)
  redis.call('ZREMRANGEBYRANK', P .. 'cancels', 0, -1001)
end
event(k, maxlen, 'type', 'session.cancelled', 'session', sid, 'time', now, 'reason', reason, 'dropped', dropped,
  'running', running)
refresh(P, k, sid, now, s[4], s[5], true, s[6])
return {1, dropped, running}
