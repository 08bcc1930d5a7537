-- delete: an operator deletes a finished job (SUCCEEDED, FAILED or
-- CANCELLED) with its history and index entries.
-- KEYS[1] job hash   KEYS[2] job events   KEYS[3] queue done set
-- KEYS[4] queue dead set   KEYS[5] queue all index
-- ARGV[1] job id
-- Returns {'ok'} | {'missing'} | {'stale', state}
local st = tonumber(redis.call('HGET', KEYS[1], 'st'))
if not st then return { 'missing' } end
if not is_terminal(st) then return { 'stale', st } end
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
redis.call('DEL', KEYS[1], KEYS[2])
return { 'ok' }
