-- release: hands a running job back to the queue without using an attempt
-- (a worker shutting down). A job whose cancel was asked ends CANCELLED.
-- KEYS[1] job hash   KEYS[2] job events   KEYS[3] queue active set
-- KEYS[4] queue ready set   KEYS[5] queue seq   KEYS[6] queue done set
-- ARGV[1] job id   ARGV[2] lease token   ARGV[3] event cap
-- ARGV[4] '1' when a checkpoint is given   ARGV[5] checkpoint
-- ARGV[6] wake channel   ARGV[7] wake message
-- Returns {'ok', state} | {'missing'} | {'stale', state}
local refused = check_lease(KEYS[1], ARGV[2])
if refused then return refused end
local now = now_ms()
if ARGV[4] == '1' then redis.call('HSET', KEYS[1], 'cp', ARGV[5]) end
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[1], 'tok', 'le', 'dl')
if redis.call('HGET', KEYS[1], 'cr') == '1' then
  finish(KEYS[1], KEYS[2], KEYS[6], ARGV[1], S_CANCELLED, now, ARGV[3])
  return { 'ok', S_CANCELLED }
end
redis.call('HINCRBY', KEYS[1], 'a', -1)
redis.call('HSET', KEYS[1], 'st', S_QUEUED, 'ra', fmt(now), 'ua', fmt(now))
enqueue(KEYS[1], KEYS[4], KEYS[5], ARGV[1])
add_event(KEYS[1], KEYS[2], ARGV[3], E_STATE, S_QUEUED, now)
redis.call(PUBLISH, ARGV[6], ARGV[7])
return { 'ok', S_QUEUED }
