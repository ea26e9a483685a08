#!lua
-- compact: frees what a settled, idle session no longer needs. Run by every worker on the
-- reaper's schedule; idempotent. A session with no step queued or held whose `active` time is
-- older than the idle time loses its event stream; the session hash keeps the stream's last
-- generated id in `evlast`. A reader resuming from that id sees no gap (the next event's id
-- continues after it: see `event` in the prelude), and one resuming from earlier, or from the
-- start, is told the events were trimmed and gets a snapshot instead. Up to 8 idempotency
-- keys move from the session's idem hash into its session hash as `i:<key>` fields.
-- Candidates come from `sessions`, scored by the last expiry refresh, which is never later than
-- `active`, in score order from a cursor (`compact`: "<score> <n>", the n members of that score
-- already looked at); a candidate that is busy or not idle long enough is re-scored to now or to
-- its `active` time, so it comes back once it can be compacted.
-- KEYS: none (derived).
-- ARGV[1] prefix  ARGV[2] idle ms (> 0)  ARGV[3] most sessions looked at per call (1-10000)
-- Returns the number of streams removed.
local P = prefix_arg(ARGV[1])
local idle = int_arg(ARGV[2], 'idle time', 1)
local batch = int_arg(ARGV[3], 'batch', 1, 10000)
local now = server_ms()
local cursor = redis.call('GET', P .. 'compact') or '0 0'
local cscore, cdone = string.match(cursor, '^(%d+) (%d+)$')
cscore, cdone = tonumber(cscore) or 0, tonumber(cdone) or 0
local items = redis.call('ZRANGEBYSCORE', P .. 'sessions', cscore, now - idle, 'WITHSCORES', 'LIMIT', cdone, batch)
if #items == 0 then return 0 end
local trimmed = 0
local last, same = cscore, cdone
for i = 1, #items, 2 do
  local sid, score = items[i], tonumber(items[i + 1])
  local k = session_keys(P, sid)
  local stay = true
  local h = redis.call('HMGET', k.session, 'holder', 'active')
  if h[2] then
    local active = tonumber(h[2]) or 0
    if (h[1] and h[1] ~= '') or redis.call('LLEN', k.inbox) > 0 then
      redis.call('ZADD', P .. 'sessions', now, sid)
      stay = false
    elseif active > now - idle then
      redis.call('ZADD', P .. 'sessions', active, sid)
      stay = false
    else
      if redis.call('EXISTS', k.events) == 1 then
        local info = redis.call('XINFO', 'STREAM', k.events)
        for j = 1, #info, 2 do
          if info[j] == 'last-generated-id' then redis.call('HSET', k.session, 'evlast', info[j + 1]) end
        end
        redis.call('DEL', k.events)
        trimmed = trimmed + 1
      end
      -- A few idempotency keys move into the session hash (`i:<key>`, which submit also
      -- reads): one key less per idle session.
      if redis.call('HLEN', k.idem) <= 8 then
        local kv = redis.call('HGETALL', k.idem)
        for j = 1, #kv, 2 do redis.call('HSET', k.session, 'i:' .. kv[j], kv[j + 1]) end
        if #kv > 0 then redis.call('DEL', k.idem) end
      end
    end
  end
  -- Only members still at their score count toward the cursor's place among equal scores.
  if stay then
    if score == last then same = same + 1 else last, same = score, 1 end
  end
end
redis.call('SET', P .. 'compact', string.format('%d %d', last, same))
return trimmed
