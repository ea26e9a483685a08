#!lua
-- forget: crypto-shreds a session: deletes its hash (with the wrapped data key `dk`), inbox,
-- jobs, idempotency keys and event stream, and its index entries. Once the data key is gone, no
-- copy of its sealed data (the AOF, a replica) opens; see docs/SECURITY.md for backups. Job ids
-- of the session left in `ready`, `delayed`, `parked` or an in-flight list are skipped by the
-- claim (no session), and a running step's commit is stale (no holder): nothing is written back.
-- An active-session slot it held is freed by the next sweep (its session holds no step).
-- KEYS: none (derived).
-- ARGV[1] prefix  ARGV[2] session id  ARGV[3] owner ('')  ARGV[4] '1' = an operator call (no owner check)
-- Owner rule as in submit: a session with an owner is forgotten only for that owner or an operator.
-- Returns {1, encrypted (1|0)} when it was forgotten, {0, 0} when there is no such session.
-- Errors: STEPWISE invalid_argument | not_owner.
local P = prefix_arg(ARGV[1])
local sid, owner = ARGV[2], ARGV[3]
need(sid ~= nil and string.match(sid, '^[A-Za-z0-9_%-]+$') ~= nil and #sid <= 64, 'invalid_argument', 'bad session id')
local k = session_keys(P, sid)
local cur = redis.call('HMGET', k.session, 'agent', 'owner', 'dk')
if not cur[1] then return {0, 0} end
if not (ARGV[4] == '1' or cur[2] == '' or cur[2] == owner) then
  fail('not_owner', 'session ' .. sid .. ' belongs to another owner')
end
-- Validated: from here on the script only deletes.
redis.call('DEL', k.session, k.inbox, k.jobs, k.idem, k.events)
redis.call('ZREM', P .. 'sessions', sid)
redis.call('ZREM', P .. 'expiry', sid)
redis.call('ZREM', P .. 'dead', sid)
redis.call('HINCRBY', P .. 'stats', 'forgotten', 1)
local encrypted = 0
if cur[3] and cur[3] ~= '' then encrypted = 1 end
return {1, encrypted}
