#!lua flags=allow-oom
-- heartbeat: keeps a live worker registered. Allowed when Redis is out of memory (`allow-oom`):
-- its writes overwrite keys that exist, so a full Redis never makes a live worker look dead.
-- KEYS[1] this worker's heartbeat  KEYS[2] workers zset
-- ARGV[1] prefix  ARGV[2] worker id  ARGV[3] TTL ms  ARGV[4] status ('ok' | 'oom' | 'stopping')
-- Returns 1 when the heartbeat was alive, 0 when it had expired (or is new): the worker may have
-- been reaped, so its held steps' commits will be rejected as stale.
local P = prefix_arg(ARGV[1])
local worker = worker_arg(ARGV[2])
local ttl = int_arg(ARGV[3], 'ttl', 1)
local status = oneof_arg(ARGV[4], 'status', {'ok', 'oom', 'stopping'})
if not (KEYS[1] == P .. 'worker:' .. worker and KEYS[2] == P .. 'workers') then
  fail('invalid_argument', 'keys do not belong to worker ' .. worker)
end
local old = redis.call('SET', KEYS[1], status, 'PX', ttl, 'GET')
redis.call('ZADD', KEYS[2], server_ms(), worker)
if old then return 1 end
return 0
