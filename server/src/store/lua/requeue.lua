-- requeue: an operator puts a FAILED job (a dead letter) back in its queue
-- with a fresh set of attempts. Its checkpoint is kept.
-- KEYS[1] job hash   KEYS[2] job events   KEYS[3] queue ready set
-- KEYS[4] queue dead set   KEYS[5] queue done set   KEYS[6] queue seq
-- ARGV[1] job id   ARGV[2] event cap   ARGV[3] wake channel   ARGV[4] wake message
-- Returns {'ok', state} | {'missing'} | {'stale', state}
local st = tonumber(redis.call('HGET', KEYS[1], 'st'))
if not st then return { 'missing' } end
if st ~= S_FAILED then return { 'stale', st } end
local now = now_ms()
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
redis.call('PERSIST', KEYS[1])
redis.call('PERSIST', KEYS[2])
redis.call('HDEL', KEYS[1], 'fa', 'ex', 'tok')
redis.call('HSET', KEYS[1], 'st', S_QUEUED, 'a', 0, 'ra', fmt(now), 'ua', fmt(now))
enqueue(KEYS[1], KEYS[3], KEYS[6], ARGV[1])
add_event(KEYS[1], KEYS[2], ARGV[2], E_STATE, S_QUEUED, now)
redis.call(PUBLISH, ARGV[3], ARGV[4])
return { 'ok', S_QUEUED }
