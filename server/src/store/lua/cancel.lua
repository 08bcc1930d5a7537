-- cancel: ends a job that is not running; asks a running one's worker to stop.
-- KEYS[1] job hash   KEYS[2] job events   KEYS[3] queue ready set
-- KEYS[4] queue sched set   KEYS[5] queue done set
-- ARGV[1] job id   ARGV[2] reason   ARGV[3] event cap
-- Returns {'ok', state, cancel requested (0/1)} | {'missing'}
local st = tonumber(redis.call('HGET', KEYS[1], 'st'))
if not st then return { 'missing' } end
if is_terminal(st) then
  return { 'ok', st, redis.call('HGET', KEYS[1], 'cr') == '1' and 1 or 0 }
end
local now = now_ms()
if st == S_RUNNING then
  if redis.call('HGET', KEYS[1], 'cr') ~= '1' then
    redis.call('HSET', KEYS[1], 'cr', 1, 'crr', ARGV[2], 'ua', fmt(now))
    add_event(KEYS[1], KEYS[2], ARGV[3], E_CANCEL, S_RUNNING, now)
  end
  return { 'ok', S_RUNNING, 1 }
end
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('HSET', KEYS[1], 'cr', 1, 'crr', ARGV[2])
finish(KEYS[1], KEYS[2], KEYS[5], ARGV[1], S_CANCELLED, now, ARGV[3])
return { 'ok', S_CANCELLED, 1 }
