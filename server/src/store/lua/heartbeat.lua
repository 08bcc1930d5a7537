-- heartbeat: extends a running lease, records progress and a checkpoint.
-- KEYS[1] job hash   KEYS[2] job events   KEYS[3] queue active set
-- ARGV[1] job id   ARGV[2] lease token   ARGV[3] event cap
-- ARGV[4] '1' when progress is given   ARGV[5] progress
-- ARGV[6] '1' when a checkpoint is given   ARGV[7] checkpoint
-- Returns {'ok', cancel requested (0/1), cancel reason, lease expires ms}
--       | {'missing'} | {'stale', state}
local refused = check_lease(KEYS[1], ARGV[2])
if refused then return refused end
local now = now_ms()
local f = redis.call('HMGET', KEYS[1], 'o', 'dl', 'cr', 'crr')
local _, _, lt = options(f[1])
local le = now + lt
local dl = tonumber(f[2] or '0')
if dl > 0 and dl < le then le = dl end
redis.call('HSET', KEYS[1], 'le', fmt(le), 'ua', fmt(now))
redis.call('ZADD', KEYS[3], fmt(le), ARGV[1])
if ARGV[6] == '1' then redis.call('HSET', KEYS[1], 'cp', ARGV[7]) end
if ARGV[4] == '1' and redis.call('HGET', KEYS[1], 'pg') ~= ARGV[5] then
  redis.call('HSET', KEYS[1], 'pg', ARGV[5])
  add_event(KEYS[1], KEYS[2], ARGV[3], E_PROGRESS, S_RUNNING, now)
end
return { 'ok', f[3] == '1' and 1 or 0, f[4] or '', fmt(le) }
