#!lua
-- release: puts one of this worker's in-flight jobs back at the front of `ready` without
-- committing: a graceful shutdown's unfinished step (token given), or an orphan the worker holds
-- no slot for (token ''). Acts only on what this worker owns: the job must be in this worker's
-- in-flight list (LREM = 1) and the session's holder must be the token (or, for an orphan, empty
-- or one of this worker's tokens). Never revives a dead-lettered (blocked) job.
-- KEYS[1] ready   KEYS[2] this worker's in-flight list
-- ARGV[1] prefix  ARGV[2] worker id  ARGV[3] job id  ARGV[4] holder token ('' = orphan)
-- ARGV[5] now ms  ARGV[6] events maxlen  ARGV[7] reason ('shutdown' | 'orphan')  ARGV[8] active-session limit
-- ARGV[9] uncount ('1': this delivery does not count as an attempt)
-- Returns 1 when released, 0 when there was nothing of ours to release.
local P = prefix_arg(ARGV[1])
local worker = worker_arg(ARGV[2])
local jid, token = ARGV[3], ARGV[4]
local sid, seq = job_arg(jid)
local now = int_arg(ARGV[5], 'now', 0)
local maxlen = int_arg(ARGV[6], 'maxlen', 1)
local reason = oneof_arg(ARGV[7], 'reason', {'shutdown', 'orphan'})
local limit = int_arg(ARGV[8], 'active limit', 0)
oneof_arg(ARGV[9], 'uncount', {'0', '1'})
if not (token == '' or string.sub(token, 1, #worker + 1) == worker .. '/') then
  fail('invalid_argument', 'holder token does not belong to worker ' .. worker)
end
if not (KEYS[1] == P .. 'ready' and KEYS[2] == P .. 'inflight:' .. worker) then
  fail('invalid_argument', 'keys do not belong to worker ' .. worker)
end
if redis.call('LREM', KEYS[2], 0, jid) == 0 then
  redis.call('HINCRBY', P .. 'stats', 'stale_releases', 1)
  return 0
end
local k = session_keys(P, sid)
local s = redis.call('HMGET', k.session, 'holder', 'steps', 'cancelled', 'blocked', 'exp')
if (not s[1]) or s[4] or redis.call('LINDEX', k.inbox, 0) ~= jid then return 0 end
local mine
if token ~= '' then mine = s[1] == token
else mine = s[1] == '' or string.sub(s[1], 1, #worker + 1) == worker .. '/' end
if not mine then
  -- A newer claim of this same worker may hold the job: its entry stays.
  keep_own(KEYS[2], worker, k, jid)
  redis.call('HINCRBY', P .. 'stats', 'stale_releases', 1)
  return 0
end
local attempt = redis.call('HGET', k.jobs, seq .. ':a') or '0'
if s[1] ~= '' then
  free_slot(P, sid, limit)
  if ARGV[9] == '1' then
    -- A graceful release gives back the delivery the claim counted. An orphan release does not:
    -- its run may have crashed with a previous process.
    redis.call('HINCRBY', k.jobs, seq .. ':a', -1)
  end
end
if s[3] then
  drop_cancelled(k, jid, seq, now, maxlen, attempt, s[2])
else
  requeue(P, k, jid)
  event(k, maxlen, 'type', 'step.released', 'job', jid, 'step', tonumber(s[2]) + 1,
    'attempt', attempt, 'time', now, 'reason', reason)
end
seal(s[5], {k.events})
return 1
