-- submit: creates a job, QUEUED or SCHEDULED, unless its idempotency key was
-- seen on this queue.
-- KEYS[1] job hash      KEYS[2] job events (unused: the first event is the
-- record itself, see prelude.lua)                KEYS[3] queue ready set
-- KEYS[4] queue sched   KEYS[5] queue seq     KEYS[6] idempotency record
-- ARGV[1] job id        ARGV[2] '1' when an idempotency key is given
-- ARGV[3] request hash  ARGV[4] idempotency ttl ms
-- ARGV[5] run at ms (0: none)   ARGV[6] delay ms (0: none)
-- ARGV[7] event cap (unused)   ARGV[8] wake channel   ARGV[9] wake message
-- ARGV[10] priority     ARGV[11..] job hash field/value pairs
-- Returns {'new', id, state} | {'dup', id} | {'conflict', id}
local id = ARGV[1]
if ARGV[2] == '1' then
  local seen = redis.call('HMGET', KEYS[6], 'id', 'h')
  if seen[1] then
    if seen[2] == ARGV[3] then return { 'dup', seen[1] } end
    return { 'conflict', seen[1] }
  end
end
if redis.call('EXISTS', KEYS[1]) == 1 then return { 'conflict', id } end
local now = now_ms()
local state = create_job(KEYS[1], id, KEYS[4], ARGV[5], ARGV[6], 11, #ARGV, now, fmt(now))
if ARGV[2] == '1' then
  redis.call('HSET', KEYS[6], 'id', id, 'h', ARGV[3])
  redis.call('PEXPIRE', KEYS[6], ARGV[4])
end
if state == S_QUEUED then
  local s = redis.call('INCR', KEYS[5])
  redis.call('ZADD', KEYS[3], fmt((1000 - tonumber(ARGV[10])) * 2199023255552 + s), id)
  redis.call('PUBLISH', ARGV[8], ARGV[9])
end
return { 'new', id, state }
