#!lua
-- dead_letter: acts on a session's dead letter (its blocked head job).
--  retry: clears the dead letter, resets the job's failure count and quarantine, and releases it
--    to `ready` (it runs under a fresh fencing token, like every claim).
--  purge: discards the job (never applied) and releases the session's next job, if any.
-- KEYS: none (derived).
-- ARGV[1] prefix  ARGV[2] job id  ARGV[3] action ('retry' | 'purge')  ARGV[4] now ms  ARGV[5] events maxlen
-- Returns 1. Errors: STEPWISE invalid_argument | not_dead.
local P = prefix_arg(ARGV[1])
local jid = ARGV[2]
local action = oneof_arg(ARGV[3], 'action', {'retry', 'purge'})
local now = int_arg(ARGV[4], 'now', 0)
local maxlen = int_arg(ARGV[5], 'maxlen', 1)
local sid, seq = split_job(jid or '')
if sid == nil then fail('not_dead', tostring(jid) .. ' is not a job id (session:number)') end
local k = session_keys(P, sid)
local s = redis.call('HMGET', k.session, 'blocked', 'ttl', 'refreshed', 'exp')
if not (s[1] == jid and redis.call('LINDEX', k.inbox, 0) == jid) then
  fail('not_dead', 'job ' .. jid .. ' is not in the dead-letter list (see stepwise dead list)')
end
-- Validated: from here on the script only writes.
redis.call('HDEL', k.session, 'blocked', 'dead_reason', 'dead_error', 'dead_attempts', 'dead_at')
redis.call('ZREM', P .. 'dead', sid)
if action == 'retry' then
  redis.call('HDEL', k.jobs, seq .. ':f', seq .. ':q')
  redis.call('HSET', k.jobs, seq .. ':a', 0)
  redis.call('HSET', k.session, 'status', 'queued', 'active', now, 'holder', '')
  redis.call('RPUSH', P .. 'ready', jid)
  event(k, maxlen, 'type', 'step.retried', 'job', jid, 'time', now)
else
  redis.call('LPOP', k.inbox)
  redis.call('HDEL', k.jobs, job_fields(seq))
  event(k, maxlen, 'type', 'step.discarded', 'job', jid, 'time', now)
  local head = redis.call('LINDEX', k.inbox, 0)
  if head then
    redis.call('RPUSH', P .. 'ready', head)
    redis.call('HSET', k.session, 'status', 'queued', 'active', now)
  end
end
refresh(P, k, sid, now, s[2], s[3], true, s[4])
return 1
