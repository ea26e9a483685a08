#!lua
-- sweep: index upkeep, run by every worker on the reaper's schedule (idempotent). Removes the
-- index entries (`sessions`, `expiry`, `dead`) of sessions whose keys expired, frees active slots
-- whose session holds no step, and lets parked jobs take free slots.
-- KEYS: none (derived).
-- ARGV[1] prefix  ARGV[2] active-session limit (0 = none)
-- Returns the number of expired sessions swept.
local P = prefix_arg(ARGV[1])
local limit = int_arg(ARGV[2], 'active limit', 0)
local due = redis.call('ZRANGEBYSCORE', P .. 'expiry', '-inf', server_ms(), 'LIMIT', 0, 500)
local n = 0
for _, sid in ipairs(due) do
  local exp = redis.call('HGET', P .. 's:{' .. sid .. '}', 'exp')
  if exp and exp ~= '' then
    redis.call('ZADD', P .. 'expiry', exp, sid)
  else
    redis.call('ZREM', P .. 'expiry', sid)
    if not exp then
      redis.call('ZREM', P .. 'sessions', sid)
      redis.call('ZREM', P .. 'dead', sid)
      redis.call('SREM', P .. 'active', sid)
      n = n + 1
    end
  end
end
for _, sid in ipairs(redis.call('SRANDMEMBER', P .. 'active', 100)) do
  local holder = redis.call('HGET', P .. 's:{' .. sid .. '}', 'holder')
  if (not holder) or holder == '' then redis.call('SREM', P .. 'active', sid) end
end
-- Without a limit (say, the pool was restarted without one) parked jobs all go.
for _ = 1, 1000 do
  if limit > 0 and redis.call('SCARD', P .. 'active') >= limit then break end
  if not redis.call('LMOVE', P .. 'parked', P .. 'ready', 'LEFT', 'RIGHT') then break end
end
return n
