#!lua
-- commit: ends one step if and only if this worker still holds the session with this token.
--  continue|wait|done|fail: writes the state at version + 1, appends `step.completed`
--    (`step.failed` for fail), removes the job from the inbox and the in-flight list, enqueues a
--    continuation first in the inbox, and releases the session's next job to `ready`.
--  retry: the job stays at the head of its session, its failure count grows, `step.retrying`,
--    and it waits in `delayed` until now + delay.
--  dead: the job stays at the head, the session is blocked (`failed`) until the dead letter is
--    retried or purged; `step.dead`.
--  any outcome on a cancelled session: the job is dropped (`step.cancelled`).
-- A call repeated after a lost reply finds its own token in `committed` and answers the same
-- status without applying anything again. Optionally claims the next ready job in the same call.
-- KEYS[1] ready   KEYS[2] this worker's in-flight list
-- ARGV[1] prefix  ARGV[2] worker id  ARGV[3] now ms  ARGV[4] events maxlen  ARGV[5] job id
-- ARGV[6] holder token  ARGV[7] outcome  ARGV[8] state JSON  ARGV[9] payload (next input,
-- result, reason or error)  ARGV[10] fetch next ('1'|'0')  ARGV[11] active-session limit
-- ARGV[12] retry delay ms  ARGV[13] dead-letter reason  ARGV[14] attempts to record on a dead letter ('')
-- ARGV[15] the payload's second copy ('' or absent = ARGV[9]): a continuation's input (jobs hash)
--   or a dead letter's `dead_error` (session hash). An encrypting worker seals each copy for its
--   own field, so the event's copy does not open as the other.
-- ARGV[16] for the next claim: a state longer than this many bytes is not sent ('' or absent =
--   always sent; see claim.lua ARGV[8])
-- ARGV[17] '1': with fetch next, when this commit releases the session's next job, claim that job
--   (it goes to this worker's in-flight list, not to `ready`), so the worker that has the
--   session's state cached runs its next step ('' or absent: the next job goes to `ready`)
-- ARGV[18] a state delta '<prefix> <suffix> <version>' ('' or absent: ARGV[8] is the whole state):
--   the new state is the stored state's first <prefix> bytes, then ARGV[8], then its last
--   <suffix> bytes. It applies only to the state at <version> (the claim's), of at least
--   <prefix> + <suffix> bytes; otherwise the call answers 'delta' and changes nothing, and the
--   worker sends the whole state.
-- ARGV[19] the attempt its claim gave ('' or absent: read from the jobs hash), ARGV[20] its submit
--   time ms ('' none), ARGV[21] its attempt limit ('' none): what the claim read and the holder
--   token fences (nothing else writes them while the job is held), so the commit need not read
--   them again.
-- Returns {'ok'|'retry'|'dead'|'cancelled'|'stale'|'delta', event id, version, next claim or nil}.
local P = prefix_arg(ARGV[1])
local worker = worker_arg(ARGV[2])
local now = int_text_arg(ARGV[3], 'now', 0)
local maxlen = int_text_arg(ARGV[4], 'maxlen', 1)
local jid, holder = ARGV[5], ARGV[6]
local sid, seq = job_arg(jid)
local outcome = oneof_arg(ARGV[7], 'outcome', {'continue', 'wait', 'done', 'fail', 'retry', 'dead'})
oneof_arg(ARGV[10], 'fetch next', {'0', '1'})
local limit = int_arg(ARGV[11], 'active limit', 0)
local delay = int_arg(ARGV[12], 'retry delay', 0)
int_arg(ARGV[14], 'dead attempts', 0, nil, true)
local above = int_arg(ARGV[16] or '', 'state cache threshold', 0, nil, true)
local claimed = int_arg(ARGV[19] or '', 'attempt', 1, nil, true) ~= nil
if claimed then
  int_arg(ARGV[20], 'submit time', 0, nil, true)
  int_arg(ARGV[21], 'attempt limit', 1, nil, true)
end
local sticky = ARGV[17] == '1' and ARGV[10] == '1'
local delta = ARGV[18] or ''
local dprefix, dsuffix, dversion
if delta ~= '' then
  dprefix, dsuffix, dversion = string.match(delta, '^(%d+) (%d+) (%d+)$')
  if dprefix == nil then
    fail('invalid_argument', 'state delta must be "<prefix> <suffix> <version>", got ' .. delta)
  end
  dprefix, dsuffix, dversion = tonumber(dprefix), tonumber(dsuffix), tonumber(dversion)
end
local kept
if string.sub(holder, 1, #worker + 1) ~= worker .. '/' then
  fail('invalid_argument', 'holder token does not belong to worker ' .. worker)
end
if not (KEYS[1] == P .. 'ready' and KEYS[2] == P .. 'inflight:' .. worker) then
  fail('invalid_argument', 'keys do not belong to worker ' .. worker)
end
local second = ARGV[15]
if second == nil or second == '' then second = ARGV[9] end
local k = session_keys(P, sid)
local result
-- Keys this call may create, sealed with the session's expiry: the inbox and jobs hash when a
-- continuation refills an inbox its commit emptied. Not the stream: the claim of the step this
-- call ends wrote `step.started` to it and sealed it, and nothing removes a held session's
-- stream (compaction skips held sessions; a forget or expiry removes the session hash too, and
-- then this call is stale).
local created = {}
local cur = redis.call('HMGET', k.session, 'holder', 'version', 'steps', 'ttl', 'refreshed', 'cancelled', 'exp', 'committed')
local last_token, last_status = nil, nil
if cur[8] then last_token, last_status = string.match(cur[8], '^(.*)=(%a+)$') end
-- The inbox's first two jobs: this step's (when it is current) and the one after it, which this
-- commit releases (one read for both).
local firsts = redis.call('LRANGE', k.inbox, '0', '1')
if last_token == holder or cur[1] ~= holder or firsts[1] ~= jid then
  -- A repeated call (its first run removed this call's entry) or a stale one. The worker's
  -- in-flight list holds bare job ids: while the job still heads its session, unheld or held by
  -- this worker, an entry of it belongs to another step of this worker (a newer claim, or a
  -- fresh fetch about to claim it) and stays. Otherwise any entry left is garbage.
  local head = firsts[1]
  local theirs = cur[1] and cur[1] ~= '' and string.sub(cur[1], 1, #worker + 1) ~= worker .. '/'
  if head ~= jid or theirs then redis.call('LREM', KEYS[2], '0', jid) end
  if last_token == holder then
    result = {last_status, '', tonumber(cur[2])}
  else
    redis.call('HINCRBY', P .. 'stats', 'stale_commits', '1')
    result = {'stale', '', 0}
  end
else
  local state = ARGV[8]
  if delta ~= '' and not cur[6] and (outcome == 'continue' or outcome == 'wait' or outcome == 'done' or outcome == 'fail') then
    -- Read before anything is written: a delta that does not fit changes nothing.
    local old = redis.call('HGET', k.session, 'state') or ''
    if dversion ~= tonumber(cur[2]) or dprefix + dsuffix > #old then
      return {'delta', '', tonumber(cur[2])}
    end
    state = string.sub(old, 1, dprefix) .. ARGV[8] .. string.sub(old, #old - dsuffix + 1)
  end
  local j
  if claimed then
    j = {ARGV[19], ARGV[20], ARGV[21]}
    if j[3] == '' then j[3] = nil end
  else
    j = redis.call('HMGET', k.jobs, seq .. ':a', seq .. ':t', seq .. ':m')
  end
  redis.call('LREM', KEYS[2], '0', jid)
  free_slot(P, sid, limit)
  local attempt = j[1] or '1'
  local status
  if cur[6] then
    drop_cancelled(k, jid, seq, now, maxlen, attempt, cur[3])
    result = {'cancelled', '', tonumber(cur[2])}
  elseif outcome == 'retry' then
    redis.call('HINCRBY', k.jobs, seq .. ':f', '1')
    redis.call('HSET', k.session, 'holder', '', 'status', 'queued', 'active', now, 'committed', holder .. '=retry')
    redis.call('ZADD', P .. 'delayed', server_ms() + delay, jid)
    local eid = event(k, maxlen, 'type', 'step.retrying', 'job', jid, 'step', tonumber(cur[3]) + 1,
      'attempt', attempt, 'time', now, 'delay', delay, 'error', ARGV[9])
    result = {'retry', eid, tonumber(cur[2])}
  elseif outcome == 'dead' then
    if ARGV[14] ~= '' then attempt = ARGV[14] end
    redis.call('HSET', k.session, 'holder', '', 'status', 'failed', 'active', now, 'blocked', jid, 'committed', holder .. '=dead',
      'dead_reason', ARGV[13], 'dead_error', second, 'dead_attempts', attempt, 'dead_at', now)
    redis.call('ZADD', P .. 'dead', now, sid)
    redis.call('HINCRBY', P .. 'stats', 'dead', '1')
    local eid = event(k, maxlen, 'type', 'step.dead', 'job', jid, 'step', tonumber(cur[3]) + 1,
      'attempt', attempt, 'time', now, 'reason', ARGV[13], 'error', ARGV[9])
    result = {'dead', eid, tonumber(cur[2])}
  else
    local version = tonumber(cur[2]) + 1
    local versiontext, step = tostring(version), tostring(tonumber(cur[3]) + 1)
    redis.call('HDEL', k.jobs, job_fields(seq))
    redis.call('LPOP', k.inbox)
    local etype = 'step.completed'
    if outcome == 'fail' then etype = 'step.failed' end
    local eid = event(k, maxlen, 'type', etype, 'job', jid, 'step', step, 'attempt', attempt,
      'time', now, 'outcome', outcome, 'version', versiontext, 'submitted', j[2] or '', 'data', ARGV[9])
    -- The session's next job: a continuation goes first in the inbox, else the one after this.
    local head = firsts[2]
    if outcome == 'continue' then
      local nseq = next_seq(P)
      if j[3] then
        -- A continuation inherits its submit's attempt limit.
        redis.call('HSET', k.jobs, nseq, second, nseq .. ':t', now, nseq .. ':m', j[3])
      else
        redis.call('HSET', k.jobs, nseq, second, nseq .. ':t', now)
      end
      if redis.call('LPUSH', k.inbox, sid .. ':' .. nseq) == 1 then created = {k.inbox, k.jobs} end
      head = sid .. ':' .. nseq
    end
    if head then
      if sticky then kept = head else redis.call('RPUSH', KEYS[1], head) end
      status = 'queued'
    elseif outcome == 'done' then status = 'done'
    elseif outcome == 'fail' then status = 'failed'
    else status = 'waiting' end
    redis.call('HSET', k.session, 'state', state, 'version', versiontext, 'steps', step, 'holder', '', 'committed', holder .. '=ok',
      'active', now, 'status', status)
    redis.call('HINCRBY', P .. 'stats', 'committed', '1')
    result = {'ok', eid, version}
  end
  if result[1] == 'cancelled' then redis.call('HSET', k.session, 'committed', holder .. '=cancelled') end
  refresh(P, k, sid, now, cur[4], cur[5], false, cur[7], created)
end
if ARGV[10] == '1' then
  if redis.call('EXISTS', P .. 'worker:' .. worker) == 1 then
    local nxt
    if kept then
      -- As if released to `ready` and moved back at once: the claim checks it like any other.
      redis.call('RPUSH', KEYS[2], kept)
      nxt = kept
    else
      nxt = redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT')
    end
    if nxt then result[4] = claim(P, KEYS[2], worker, now, maxlen, limit, nxt, true, above) end
  elseif kept then
    redis.call('RPUSH', KEYS[1], kept)
  end
end
return result
