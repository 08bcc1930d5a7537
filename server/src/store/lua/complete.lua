-- complete: ends a running attempt with success.
-- KEYS[1] job hash   KEYS[2] job events   KEYS[3] queue active set
-- KEYS[4] queue done set (retention index)
-- ARGV[1] job id   ARGV[2] lease token   ARGV[3] event cap   ARGV[4] result
-- Returns {'ok', state, ms the attempt ran (-1: already completed)}
--       | {'missing'} | {'stale', state}
local refused = check_lease(KEYS[1], ARGV[2])
if refused then
  -- A retried Complete of the attempt that already succeeded is answered
  -- again, so a worker that lost the first reply does not see an error.
  if refused[2] == S_SUCCEEDED and redis.call('HGET', KEYS[1], 'tok') == ARGV[2] then
    return { 'ok', S_SUCCEEDED, -1 }
  end
  return refused
end
local now = now_ms()
local ran = now - tonumber(redis.call('HGET', KEYS[1], 'sa') or now)
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HSET', KEYS[1], 'res', ARGV[4])
finish(KEYS[1], KEYS[2], KEYS[4], ARGV[1], S_SUCCEEDED, now, ARGV[3], { 'r', ARGV[4] })
return { 'ok', S_SUCCEEDED, fmt(ran) }
