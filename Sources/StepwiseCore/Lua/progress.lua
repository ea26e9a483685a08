#!lua
-- progress: appends a `step.progress` event, only while this token still holds the session (a
-- stalled worker's late progress changes nothing and is counted), and never creates a stream for
-- a session that is gone.
-- KEYS: none (derived).
-- ARGV[1] prefix  ARGV[2] job id  ARGV[3] holder token  ARGV[4] events maxlen  ARGV[5] step
-- ARGV[6] attempt  ARGV[7] now ms  ARGV[8] message  ARGV[9] data JSON
-- ARGV[10] solo ('1': the step now runs alone, its worker running nothing else: a crash of the
--   worker is then blamed on this step only; see reap)
-- Returns the event id, or 0 when the hold is lost.
local P = prefix_arg(ARGV[1])
local jid, holder = ARGV[2], ARGV[3]
local sid, seq = job_arg(jid)
local maxlen = int_arg(ARGV[4], 'maxlen', 1)
int_arg(ARGV[5], 'step', 0)
int_arg(ARGV[6], 'attempt', 0)
int_arg(ARGV[7], 'now', 0)
need(holder ~= '', 'invalid_argument', 'holder token is empty')
local solo = oneof_arg(ARGV[10], 'solo', {'0', '1'})
local k = session_keys(P, sid)
local s = redis.call('HMGET', k.session, 'holder', 'exp')
if s[1] ~= holder then
  redis.call('HINCRBY', P .. 'stats', 'stale_progress', 1)
  return 0
end
if solo == '1' then redis.call('HSET', k.jobs, seq .. ':q', 'solo') end
local eid = event(k, maxlen, 'type', 'step.progress', 'job', jid, 'step', ARGV[5], 'attempt', ARGV[6],
  'time', ARGV[7], 'message', ARGV[8], 'data', ARGV[9])
seal(s[2], {k.events})
return eid
