#!lua
-- rewrap: replaces a session's wrapped data key by the same data key wrapped under another
-- keyring key (`stepwise keys rewrap`), if and only if the stored one is still `old`
-- (compare-and-set: a concurrent forget, or another rewrap, wins). Payloads are not touched.
-- KEYS: none (derived).
-- ARGV[1] prefix  ARGV[2] session id  ARGV[3] old wrapped key  ARGV[4] new wrapped key
-- Returns 1 when replaced, 0 when the stored key was not `old` (or the session is gone).
-- Errors: STEPWISE invalid_argument.
local P = prefix_arg(ARGV[1])
local sid = ARGV[2]
need(sid ~= nil and string.match(sid, '^[A-Za-z0-9_%-]+$') ~= nil and #sid <= 64, 'invalid_argument', 'bad session id')
need(ARGV[3] ~= '' and ARGV[4] ~= '', 'invalid_argument', 'empty wrapped key')
local k = session_keys(P, sid)
if redis.call('HGET', k.session, 'dk') ~= ARGV[3] then return 0 end
redis.call('HSET', k.session, 'dk', ARGV[4])
return 1
