#!lua
-- touch: refreshes a session's idle expiry now (a UI heartbeat), optionally with a new TTL.
-- KEYS: none (derived).
-- ARGV[1] prefix  ARGV[2] session id  ARGV[3] now ms  ARGV[4] ttl ms ('' keeps)
-- Returns the new expiry in ms ('' when the session never expires).
-- Errors: STEPWISE invalid_argument | session_not_found.
local P = prefix_arg(ARGV[1])
local sid = ARGV[2]
need(sid ~= nil and string.match(sid, '^[A-Za-z0-9_%-]+$') ~= nil and #sid <= 64, 'invalid_argument', 'bad session id')
local now = int_arg(ARGV[3], 'now', 0)
local ttl = ARGV[4]
int_arg(ttl, 'ttl', 0, nil, true)
local k = session_keys(P, sid)
local cur = redis.call('HMGET', k.session, 'agent', 'ttl', 'exp')
if not cur[1] then fail('session_not_found', 'session ' .. sid .. ' does not exist (or expired)') end
if ttl == '' then ttl = cur[2] else redis.call('HSET', k.session, 'ttl', ttl) end
redis.call('HSET', k.session, 'active', now)
return refresh(P, k, sid, now, ttl, 0, true, cur[3])
