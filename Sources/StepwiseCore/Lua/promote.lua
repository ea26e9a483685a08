#!lua
-- promote: moves retries whose delay is over from `delayed` to the front of `ready`, skipping
-- jobs that are no longer their session's unheld, unblocked, uncancelled head.
-- KEYS[1] delayed  KEYS[2] ready
-- ARGV[1] prefix. Due times are by the Redis server's clock.
-- Returns {moved, ms until the next retry is due, or ''}.
local P = prefix_arg(ARGV[1])
need(KEYS[1] == P .. 'delayed' and KEYS[2] == P .. 'ready', 'invalid_argument', 'keys do not match the prefix')
local now = server_ms()
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 100)
local moved = 0
for i = #due, 1, -1 do
  local jid = due[i]
  redis.call('ZREM', KEYS[1], jid)
  local sid = split_job(jid)
  if sid then
    local k = session_keys(P, sid)
    local s = redis.call('HMGET', k.session, 'cancelled', 'holder', 'blocked')
    if (not s[1]) and s[2] == '' and (not s[3]) and redis.call('LINDEX', k.inbox, 0) == jid then
      redis.call('LPUSH', KEYS[2], jid)
      moved = moved + 1
    end
  end
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local wait = ''
if nxt[2] then wait = tostring(math.max(0, tonumber(nxt[2]) - now)) end
return {moved, wait}
