-- fail: ends a running attempt with an error; retried while attempts remain.
-- KEYS[1] job hash   KEYS[2] job events   KEYS[3] queue active set
-- KEYS[4] queue sched set   KEYS[5] queue dead set   KEYS[6] queue done set
-- KEYS[7] queue ready set   KEYS[8] queue seq
-- ARGV[1] job id   ARGV[2] lease token   ARGV[3] event cap   ARGV[4] error
-- ARGV[5] '1' retryable   ARGV[6] retry after ms (-1: the job's backoff)
-- ARGV[7] random in [0, 1) for jitter   ARGV[8] '1' when a checkpoint is given
-- ARGV[9] checkpoint   ARGV[10] wake channel   ARGV[11] wake message
-- Returns {'ok', state, ms until the next attempt, ms the attempt ran}
--       | {'missing'} | {'stale', state}
local refused = check_lease(KEYS[1], ARGV[2])
if refused then return refused end
if ARGV[8] == '1' then redis.call('HSET', KEYS[1], 'cp', ARGV[9]) end
local k = { job = KEYS[1], ev = KEYS[2], active = KEYS[3], sched = KEYS[4],
  dead = KEYS[5], done = KEYS[6], ready = KEYS[7], seq = KEYS[8] }
local now = now_ms()
local ran = now - tonumber(redis.call('HGET', KEYS[1], 'sa') or now)
local r = fail_attempt(k, ARGV[1], ARGV[4], ARGV[5] == '1', tonumber(ARGV[6]),
  tonumber(ARGV[7]), ARGV[3], now, ARGV[10], ARGV[11])
local wait = 0
if r[2] > now then wait = r[2] - now end
return { 'ok', r[1], fmt(wait), fmt(ran) }
