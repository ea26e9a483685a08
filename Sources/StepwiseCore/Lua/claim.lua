#!lua
-- claim: claims a job for this worker: the given one (already moved into its in-flight list by
-- BLMOVE), or the next one from `ready` (moved here with LMOVE). See `claim` in prelude.lua for
-- the fence. Marks the session running under a fresh fencing token and appends `step.started`.
-- KEYS[1] ready   KEYS[2] this worker's in-flight list
-- ARGV[1] prefix  ARGV[2] worker id  ARGV[3] now ms  ARGV[4] job id or ''  ARGV[5] events maxlen
-- ARGV[6] active-session limit (0 = none)  ARGV[7] with job id '': how many jobs to take (1-1000)
-- ARGV[8] state cache: a state longer than this many bytes is not sent ('', 0 or absent = always sent)
-- Returns, for a given job id: {'skip', jid}, {'unregistered', jid}, or the claim
-- {'run', jid, sid, agent, options, state, version, step, attempt, input, holder, submitted,
--  max attempts, failures, quarantined, wrapped data key ('' = not encrypted), incarnation,
--  '1' when the state was left out by ARGV[8] (then `state` is '')}. For job id '': a list of such replies, one per job taken
-- from `ready` (up to ARGV[7]; empty when `ready` is empty; it stops at 'unregistered').
local P = prefix_arg(ARGV[1])
local worker = worker_arg(ARGV[2])
local now = int_text_arg(ARGV[3], 'now', 0)
local jid = ARGV[4]
local maxlen = int_text_arg(ARGV[5], 'maxlen', 1)
local limit = int_arg(ARGV[6], 'active limit', 0)
local count = int_arg(ARGV[7], 'count', 1, 1000)
local above = int_arg(ARGV[8] or '', 'state cache threshold', 0, nil, true)
if not (KEYS[1] == P .. 'ready' and KEYS[2] == P .. 'inflight:' .. worker) then
  fail('invalid_argument', 'keys do not belong to worker ' .. worker)
end
if not (jid == '' or split_job(jid) ~= nil) then
  fail('invalid_argument', 'bad job id ' .. jid .. ' (session:number)')
end
if jid ~= '' then return claim(P, KEYS[2], worker, now, maxlen, limit, jid, false, above) end
if redis.call('EXISTS', P .. 'worker:' .. worker) == 0 then return {{'unregistered', ''}} end
local claims = {}
local runs = 0
-- Skipped jobs (stale, parked, duplicates) do not count against `count`, but the loop is bounded.
for _ = 1, count + 100 do
  if runs >= count then break end
  local nxt = redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT')
  if not nxt then break end
  local c = claim(P, KEYS[2], worker, now, maxlen, limit, nxt, true, above)
  table.insert(claims, c)
  if c[1] == 'run' then runs = runs + 1 end
end
return claims
