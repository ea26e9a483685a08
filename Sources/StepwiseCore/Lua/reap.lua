#!lua
-- reap: recovers the in-flight jobs of a worker whose heartbeat key expired. Each job that is
-- still its session's head, and is unheld or held by that worker, goes back to the front of
-- `ready`; the hold and active slot are freed. Does nothing while the heartbeat exists; the
-- in-flight list is emptied in the same call, so several reapers may race safely.
-- Poison accounting: when the worker left a crash marker (P..'crash:<id>', written by its crash
-- signal handler) and held exactly one step (or ran one alone, marked by `progress`), that step
-- is blamed (its failure count grows); with several held steps none is blamed and each is
-- quarantined (it next runs alone). A worker that
-- vanished without a marker (kill -9, pause, lost host) blames nobody.
-- The worker stays registered (so a late BLMOVE into its list is still watched) until its last
-- heartbeat is older than the prune age and its list is empty.
-- KEYS[1] ready  KEYS[2] dead worker's in-flight list  KEYS[3] its heartbeat  KEYS[4] workers zset
-- ARGV[1] prefix  ARGV[2] dead worker id  ARGV[3] now ms  ARGV[4] events maxlen
-- ARGV[5] active-session limit  ARGV[6] prune age ms
-- Returns the number of jobs put back, or -1 when the worker is alive.
local P = prefix_arg(ARGV[1])
local dead = worker_arg(ARGV[2])
local now = int_arg(ARGV[3], 'now', 0)
local maxlen = int_arg(ARGV[4], 'maxlen', 1)
local limit = int_arg(ARGV[5], 'active limit', 0)
local prune = int_arg(ARGV[6], 'prune age', 0)
if not (KEYS[2] == P .. 'inflight:' .. dead and KEYS[3] == P .. 'worker:' .. dead and KEYS[4] == P .. 'workers') then
  fail('invalid_argument', 'keys do not belong to worker ' .. dead)
end
if redis.call('EXISTS', KEYS[3]) == 1 then return -1 end
local crashed = redis.call('GET', P .. 'crash:' .. dead)
redis.call('DEL', P .. 'crash:' .. dead)
local ids = redis.call('LRANGE', KEYS[2], 0, -1)
redis.call('DEL', KEYS[2])
local held, seen = {}, {}
local n = 0
for _, jid in ipairs(ids) do
  local sid, seq = split_job(jid)
  if sid and not seen[jid] then
    seen[jid] = true
    local k = session_keys(P, sid)
    local s = redis.call('HMGET', k.session, 'holder', 'steps', 'cancelled', 'blocked', 'exp')
    local holder = s[1]
    if holder and (not s[4]) and redis.call('LINDEX', k.inbox, 0) == jid and redis.call('HEXISTS', k.jobs, seq) == 1 then
      if holder == '' then
        if s[3] then drop_cancelled(k, jid, seq, now, maxlen, '0', s[2]) else redis.call('LPUSH', KEYS[1], jid); n = n + 1 end
      elseif string.sub(holder, 1, #dead + 1) == dead .. '/' then
        table.insert(held, {jid = jid, seq = seq, k = k, sid = sid, s = s})
      end
    end
  end
end
-- Suspects: the step that ran alone when there is one, else every held step.
local solo = {}
for _, h in ipairs(held) do
  if redis.call('HGET', h.k.jobs, h.seq .. ':q') == 'solo' then table.insert(solo, h) end
end
for _, h in ipairs(held) do
  local blame = ''
  local q = redis.call('HGET', h.k.jobs, h.seq .. ':q')
  if crashed and ((#solo == 1 and solo[1] == h) or (#solo == 0 and #held == 1)) then
    redis.call('HINCRBY', h.k.jobs, h.seq .. ':f', 1)
    blame = 'crash'
  elseif crashed and #solo == 0 then
    q = '1'
    blame = 'quarantine'
  end
  if q then redis.call('HSET', h.k.jobs, h.seq .. ':q', 1) end
  free_slot(P, h.sid, limit)
  local attempt = redis.call('HGET', h.k.jobs, h.seq .. ':a') or '0'
  if h.s[3] then
    drop_cancelled(h.k, h.jid, h.seq, now, maxlen, attempt, h.s[2])
  else
    requeue(P, h.k, h.jid)
    event(h.k, maxlen, 'type', 'step.recovered', 'job', h.jid, 'step', tonumber(h.s[2]) + 1,
      'attempt', attempt, 'time', now, 'worker', dead, 'blame', blame)
    n = n + 1
  end
  seal(h.s[5], {h.k.events})
end
local last = redis.call('ZSCORE', KEYS[4], dead)
if (not last) or server_ms() - tonumber(last) > prune then redis.call('ZREM', KEYS[4], dead) end
redis.call('HINCRBY', P .. 'stats', 'reaped', n)
if crashed then redis.call('HINCRBY', P .. 'stats', 'crashes', 1) end
return n
