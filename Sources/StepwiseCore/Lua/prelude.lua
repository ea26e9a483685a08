-- prelude.lua: helpers shared by every script. The Swift side puts this text right after a
-- script's shebang line, so each script sees these locals. Nothing here writes on its own.
-- P is the namespace prefix ('sw:'); session keys are derived from it and the session id.

-- Raises a typed error: 'STEPWISE <code> <message>' (ScriptCalls.mapError maps the code).
-- Scripts run on every step, so a message that has to be built (concatenated, numbers turned
-- into text) is built only on failure: `if not ok then fail(code, a .. b) end`, not `need`.
local function fail(code, msg)
  error({err = 'STEPWISE ' .. code .. ' ' .. msg})
end
-- For a message that is a constant.
local function need(ok, code, msg)
  if not ok then fail(code, msg) end
end
-- An integer argument in [lo, hi]; '' is allowed (returns nil) when optional is true.
local function int_arg(v, name, lo, hi, optional)
  if optional and v == '' then return nil end
  local n = tonumber(v)
  if not (type(v) == 'string' and n ~= nil and n >= lo and (hi == nil or n <= hi) and string.match(v, '^%-?%d+$')) then
    fail('invalid_argument', name .. ' must be an integer from ' .. lo .. (hi and (' to ' .. hi) or '') .. ', got ' .. tostring(v))
  end
  return n
end
-- The same check for an argument used only as text (sent on to Redis): returns it unchanged,
-- since a Lua number would be formatted again each time it is used as text.
local function int_text_arg(v, name, lo, hi, optional)
  int_arg(v, name, lo, hi, optional)
  return v
end
local function oneof_arg(v, name, allowed)
  for _, a in ipairs(allowed) do if v == a then return v end end
  fail('invalid_argument', name .. ' must be one of ' .. table.concat(allowed, ', ') .. ', got ' .. tostring(v))
end
local function prefix_arg(P)
  need(type(P) == 'string' and string.match(P, '^[A-Za-z0-9_.%-]+:$') ~= nil, 'invalid_argument', 'bad namespace prefix')
  return P
end
local function worker_arg(w)
  need(type(w) == 'string' and string.match(w, '^[A-Za-z0-9_.%-]+$') ~= nil and #w <= 100, 'invalid_argument', 'bad worker id')
  return w
end
-- A job id is '<session>:<number>'; the number comes from the pool-wide counter P..'seq', so a
-- job id never repeats for a session id, across incarnations.
local function split_job(jid)
  return string.match(jid, '^([A-Za-z0-9_%-]+):(%d+)$')
end
local function job_arg(jid)
  local sid, seq = split_job(jid or '')
  if sid == nil or #sid > 64 then fail('invalid_argument', 'bad job id ' .. tostring(jid) .. ' (session:number)') end
  return sid, seq
end
local function session_keys(P, sid)
  local s = P .. 's:{' .. sid .. '}'
  return {session = s, inbox = s .. ':inbox', jobs = s .. ':jobs', idem = s .. ':idem', events = s .. ':events'}
end
-- Milliseconds since 1970 by the Redis server's clock: expiry, retry and heartbeat times use it,
-- so a client with a skewed clock cannot expire a session early or delay a retry.
local function server_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- The next value of the pool-wide counter, as text: job numbers, fencing tokens and
-- incarnations. It outlives every session, so none of them ever repeats. (Text once: each use of
-- a Lua number as text, in a concatenation or a redis.call argument, formats it again.)
local function next_seq(P)
  return tostring(redis.call('INCR', P .. 'seq'))
end
-- Appends an event. After compaction removed an idle session's stream (compact.lua), the
-- session hash keeps the last id the stream generated in `evlast`; scripts that may write the
-- first event after it (claim, cancel) set `k.evlast` from their read of the hash, and that
-- event's id continues after it even if the server's clock went back meanwhile.
local function event(k, maxlen, ...)
  local id = '*'
  if k.evlast then
    local ms, sq = string.match(k.evlast, '^(%d+)-(%d+)$')
    if ms and redis.call('EXISTS', k.events) == 0 then
      local now = server_ms()
      if now > tonumber(ms) then id = now .. '-0' else id = ms .. '-' .. (tonumber(sq) + 1) end
    end
    redis.call('HDEL', k.session, 'evlast')
    k.evlast = nil
  end
  return redis.call('XADD', k.events, 'MAXLEN', '~', maxlen, id, ...)
end
-- Gives each of `keys` that exists without an expiry the session's expiry `exp` (ms, '' for a
-- session that never expires): a key this script may have created (the stream by its first
-- event, an inbox or jobs hash that had emptied) never outlives its session. Scripts pass only
-- the keys they may have created.
local function seal(exp, keys)
  if exp == nil or exp == '' then return end
  for _, key in ipairs(keys) do
    if redis.call('PTTL', key) == -1 then redis.call('PEXPIREAT', key, exp) end
  end
end
-- Refreshes the session's idle expiry and index entries when due (or when forced): every key of
-- the session gets the same PEXPIREAT, so they expire together. Refreshing at most every
-- min(ttl/10, 60 s) keeps this off the hot path; the expiry is set that much later than ttl, so a
-- session never expires early. When no refresh is due, the keys in `created` (the ones this
-- script may have created) get the current expiry `exp`. Returns the expiry in force ('' for none).
local function refresh(P, k, sid, now, ttl, last, force, exp, created)
  ttl = tonumber(ttl) or 0
  now = tonumber(now)
  local due = 60000
  if ttl > 0 then due = math.min(math.max(math.floor(ttl / 10), 1000), 60000) end
  if (not force) and now - (tonumber(last) or 0) < due then
    seal(exp, created or {})
    return exp
  end
  redis.call('ZADD', P .. 'sessions', now, sid)
  local nexp = ''
  if ttl > 0 then
    nexp = server_ms() + ttl + due
    for _, key in ipairs({k.session, k.inbox, k.jobs, k.idem, k.events}) do
      redis.call('PEXPIREAT', key, nexp)
    end
    redis.call('ZADD', P .. 'expiry', nexp, sid)
  elseif force then
    for _, key in ipairs({k.session, k.inbox, k.jobs, k.idem, k.events}) do redis.call('PERSIST', key) end
    redis.call('ZREM', P .. 'expiry', sid)
  end
  redis.call('HSET', k.session, 'refreshed', now, 'exp', nexp)
  return nexp
end
-- Frees the session's active slot (when the pool has a limit) and lets the longest waiting
-- parked job take it: it goes to the front of `ready`.
local function free_slot(P, sid, limit)
  if tonumber(limit) > 0 then
    redis.call('SREM', P .. 'active', sid)
    if redis.call('SCARD', P .. 'active') < tonumber(limit) then
      redis.call('LMOVE', P .. 'parked', P .. 'ready', 'LEFT', 'LEFT')
    end
  end
end
local function job_fields(seq)
  return seq, seq .. ':a', seq .. ':f', seq .. ':t', seq .. ':m', seq .. ':q'
end
-- Drops a cancelled session's job that is its inbox head.
local function drop_cancelled(k, jid, seq, now, maxlen, attempt, steps)
  if redis.call('LINDEX', k.inbox, 0) == jid then
    redis.call('LPOP', k.inbox)
    redis.call('HDEL', k.jobs, job_fields(seq))
    redis.call('HSET', k.session, 'holder', '')
    event(k, maxlen, 'type', 'step.cancelled', 'job', jid, 'step', (tonumber(steps) or 0) + 1, 'attempt', attempt or '0', 'time', now)
  end
end
-- A worker's in-flight list holds bare job ids, and its steps share it: after a call removed `jid`
-- without ending the hold (a duplicate claim, a stale commit or release of an older claim of this
-- same worker), put one entry back when the job is still its session's head and held by one of
-- this worker's tokens, so a reaper still finds it if the worker dies.
local function keep_own(inflight, worker, k, jid)
  local holder = redis.call('HGET', k.session, 'holder')
  if holder and string.sub(holder, 1, #worker + 1) == worker .. '/' and redis.call('LINDEX', k.inbox, 0) == jid then
    redis.call('RPUSH', inflight, jid)
  end
end
-- Puts a session's head job back at the front of `ready`, unheld.
local function requeue(P, k, jid)
  redis.call('HSET', k.session, 'holder', '', 'status', 'queued')
  redis.call('LPUSH', P .. 'ready', jid)
end
-- Claims job `jid`, which this worker moved into its in-flight list. Fenced: the job must still be
-- in that list (LREM = 1: a reaper may have taken it back while this worker stalled), this
-- worker's heartbeat must exist, and the session must have no holder. Returns the step to run,
-- {'skip', jid} (stale, duplicate, cancelled, blocked or parked), or {'unregistered', jid} when
-- this worker's heartbeat is gone (the job went back to `ready`; the worker registers again).
-- `moved`: the calling script itself just moved `jid` to the tail of the list (LMOVE), after it
-- checked the heartbeat; nothing can have come between, so the list and heartbeat checks are
-- skipped, and a path that does not claim removes just that one entry.
local function claim(P, inflight, worker, now, maxlen, limit, jid, moved, above)
  if not moved and redis.call('LREM', inflight, 0, jid) == 0 then
    redis.call('HINCRBY', P .. 'stats', 'stale_claims', 1)
    return {'skip', jid}
  end
  -- On a path that does not claim: drop this call's entry (a moved one), or keep the entry of a
  -- hold of this worker (the LREM above removed every entry).
  local function unclaimed(k)
    if moved then redis.call('LREM', inflight, -1, jid) else keep_own(inflight, worker, k, jid) end
  end
  local sid, seq = split_job(jid)
  if not sid then
    if moved then redis.call('LREM', inflight, -1, jid) end
    return {'skip', jid}
  end
  local k = session_keys(P, sid)
  local j = redis.call('HMGET', k.jobs, job_fields(seq))
  local s = redis.call('HMGET', k.session, 'agent', 'options', 'state', 'version', 'steps', 'cancelled', 'blocked', 'exp', 'holder',
    'evlast', 'dk', 'inc')
  k.evlast = s[10]
  local head = redis.call('LINDEX', k.inbox, '0')
  if not moved and redis.call('EXISTS', P .. 'worker:' .. worker) == 0 then
    if j[1] and s[1] and head == jid and s[9] == '' and not s[7] then
      if s[6] then
        drop_cancelled(k, jid, seq, now, maxlen, j[2], s[5])
        seal(s[8], {k.events})
      else
        redis.call('LPUSH', P .. 'ready', jid)
      end
    elseif s[1] then
      keep_own(inflight, worker, k, jid)
    end
    redis.call('HINCRBY', P .. 'stats', 'unregistered_claims', 1)
    return {'unregistered', jid}
  end
  if s[6] then
    if s[9] == '' then
      drop_cancelled(k, jid, seq, now, maxlen, j[2], s[5])
      seal(s[8], {k.events})
    else
      unclaimed(k)
    end
    return {'skip', jid}
  end
  if (not j[1]) or (not s[1]) or s[7] or head ~= jid then
    if moved then redis.call('LREM', inflight, -1, jid) end
    redis.call('HINCRBY', P .. 'stats', 'skipped', 1)
    return {'skip', jid}
  end
  if s[9] ~= '' then
    -- Held by a live claim: this copy is a duplicate and must not run.
    redis.call('HINCRBY', P .. 'stats', 'duplicate_claims', 1)
    unclaimed(k)
    return {'skip', jid}
  end
  if tonumber(limit) > 0 and redis.call('SCARD', P .. 'active') >= tonumber(limit)
      and redis.call('SISMEMBER', P .. 'active', sid) == 0 then
    if moved then redis.call('LREM', inflight, -1, jid) end
    redis.call('RPUSH', P .. 'parked', jid)
    return {'skip', jid}
  end
  if tonumber(limit) > 0 then redis.call('SADD', P .. 'active', sid) end
  -- Held: the job stays in this worker's in-flight list (one entry), where a reaper finds it if
  -- we die.
  if not moved then redis.call('RPUSH', inflight, jid) end
  local attempt = tostring(tonumber(j[2] or '0') + 1)
  redis.call('HSET', k.jobs, seq .. ':a', attempt)
  local step = tostring(tonumber(s[5]) + 1)
  local holder = worker .. '/' .. next_seq(P)
  redis.call('HSET', k.session, 'status', 'running', 'holder', holder, 'active', now)
  event(k, maxlen, 'type', 'step.started', 'job', jid, 'step', step, 'attempt', attempt, 'time', now)
  -- The stream may be new only for a session with no step committed yet, or one whose stream
  -- compaction removed (`evlast`): nothing else removes a live session's stream.
  if s[5] == '0' or s[10] then seal(s[8], {k.events}) end
  -- A state longer than `above` bytes stays here (the worker has it cached at this version, or
  -- reads it with HGET); the incarnation tells a re-created session's version 1 from the old one's.
  local state, omitted = s[3], ''
  if above and above > 0 and #state > above then state, omitted = '', '1' end
  return {'run', jid, sid, s[1], s[2], state, s[4], step, attempt, j[1], holder, j[4] or '', j[5] or '',
    j[3] or '0', j[6] or '', s[11] or '', s[12] or '', omitted}
end
