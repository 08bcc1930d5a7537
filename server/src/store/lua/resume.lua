-- resume: ends a queue's pause and wakes the workers waiting for it.
-- KEYS[1] queue paused flag
-- ARGV[1] wake channel   ARGV[2] wake message
-- Returns 1 when the queue was paused, else 0.
local was = redis.call('DEL', KEYS[1])
redis.call(PUBLISH, ARGV[1], ARGV[2])
return was
