#!lua
-- submit: creates the session if new (a new incarnation), de-duplicates by idempotency key,
-- appends the job to the session's inbox, and releases it to `ready` when the inbox was empty.
-- KEYS: none (all derived from the prefix).
-- ARGV[1] prefix      ARGV[2] session id       ARGV[3] agent ('' = must exist)
-- ARGV[4] owner ('')  ARGV[5] options JSON ('' keeps)   ARGV[6] input JSON
-- ARGV[7] idempotency key ('')   ARGV[8] now ms   ARGV[9] ttl ms ('' keeps; new session: default)
-- ARGV[10] initial state JSON ('' = the worker builds it on the first step)
-- ARGV[11] max attempts ('')   ARGV[12] default ttl ms
-- ARGV[13] '1' = an operator call: skips the owner check ('' or absent = an owner's call)
-- ARGV[14] the session's wrapped data key ('' or absent = a client without a keyring: plain text)
-- ARGV[15] '1' = ARGV[14] is a key the client just made (only such a key may start a new session)
-- Encryption: a new session stores ARGV[14] as `dk`; an existing one takes the submit only when
-- ARGV[14] is its `dk` (the input and options were sealed with that key). Otherwise nothing is
-- written and the reply is {'', 2, dk}: the stored key ('' for a plain session), or '-' when the
-- session does not exist and the key was not fresh; the client seals again and resubmits.
-- Owner rule: a session with an owner takes submits only from that owner (an empty owner is
-- refused too) unless the call is an operator's; a refused submit changes nothing (TTL, options).
-- Returns {job id, 1} when enqueued, {job id, 0} for a duplicate.
-- Errors: STEPWISE invalid_argument | session_not_found | agent_mismatch | not_owner | cancelled
-- | encrypted (a client without a keyring submits to an encrypted session).
local P = prefix_arg(ARGV[1])
local sid, agent, owner, options, input, idem = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
need(sid ~= nil and string.match(sid, '^[A-Za-z0-9_%-]+$') ~= nil and #sid <= 64, 'invalid_argument', 'bad session id')
local now = int_text_arg(ARGV[8], 'now', 0)
local ttl = ARGV[9]
int_arg(ttl, 'ttl', 0, nil, true)
int_arg(ARGV[11], 'max attempts', 1, 1000, true)
int_arg(ARGV[12], 'default ttl', 0)
need(#idem <= 200, 'invalid_argument', 'idempotency key over 200 bytes')
local k = session_keys(P, sid)
local dk = ARGV[14] or ''
local cur = redis.call('HMGET', k.session, 'agent', 'owner', 'ttl', 'refreshed', 'cancelled', 'exp', 'dk')
local new = not cur[1]
if new then
  if agent == '' then fail('session_not_found', 'session ' .. sid .. ' does not exist: pass --agent to create it') end
  -- A key from a cache may be one a forget destroyed: a new incarnation gets a fresh key only.
  if dk ~= '' and ARGV[15] ~= '1' then return {'', 2, '-'} end
else
  if not (agent == '' or cur[1] == agent) then
    fail('agent_mismatch', 'session ' .. sid .. ' runs agent ' .. tostring(cur[1]) .. ', not ' .. agent)
  end
  if not (ARGV[13] == '1' or cur[2] == '' or cur[2] == owner) then
    fail('not_owner', 'session ' .. sid .. ' belongs to another owner')
  end
  if cur[5] then
    fail('cancelled', 'session ' .. sid .. ' was cancelled (' .. tostring(cur[5]) .. '): start a new session')
  end
  local stored = cur[7] or ''
  if not (stored == '' or dk ~= '') then
    fail('encrypted', 'session ' .. sid .. ' is encrypted: submit with its keyring (--keyring-file, STEPWISE_KEYRING_FILE or STEPWISE_KEYRING)')
  end
  if stored ~= dk then return {'', 2, stored} end
  if idem ~= '' then
    -- Compaction folds a few keys of an idle session into its hash as `i:<key>` (compact.lua).
    local existing = redis.call('HGET', k.idem, idem) or redis.call('HGET', k.session, 'i:' .. idem)
    if existing then return {existing, 0} end
  end
end
-- Validated: from here on the script only writes.
local fields = {'active', now}
local force = new or idem ~= ''
if new then
  if options == '' then options = '{}' end
  if ttl == '' then ttl = ARGV[12] end
  -- A new incarnation: nothing of an earlier session under this id applies to it.
  redis.call('DEL', k.inbox, k.jobs, k.idem, k.events)
  redis.call('ZREM', P .. 'dead', sid)
  redis.call('HSET', k.session, 'agent', agent, 'owner', owner, 'status', 'idle', 'version', 0, 'steps', 0,
    'created', now, 'options', options, 'state', ARGV[10], 'holder', '', 'ttl', ttl, 'inc', next_seq(P))
  if dk ~= '' then redis.call('HSET', k.session, 'dk', dk) end
else
  if ttl == '' then
    ttl = cur[3]
  else
    table.insert(fields, 'ttl')
    table.insert(fields, ttl)
    force = true
  end
  if options ~= '' then table.insert(fields, 'options'); table.insert(fields, options) end
end
local seq = next_seq(P)
local jid = sid .. ':' .. seq
if ARGV[11] ~= '' then
  redis.call('HSET', k.jobs, seq, input, seq .. ':t', now, seq .. ':m', ARGV[11])
else
  redis.call('HSET', k.jobs, seq, input, seq .. ':t', now)
end
if idem ~= '' then redis.call('HSET', k.idem, idem, jid) end
local queued = redis.call('RPUSH', k.inbox, jid)
if queued == 1 then
  redis.call('RPUSH', P .. 'ready', jid)
  table.insert(fields, 'status')
  table.insert(fields, 'queued')
end
redis.call('HSET', k.session, unpack(fields))
local created = {}
if queued == 1 then created = {k.inbox, k.jobs} end
refresh(P, k, sid, now, ttl, cur[4], force, cur[6], created)
return {jid, 1}
