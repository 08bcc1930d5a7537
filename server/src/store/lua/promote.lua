-- promote: moves SCHEDULED jobs whose time has come (on Redis's clock) to
-- the ready set. Safe to run in every replica at once.
-- KEYS[1] queue sched set   KEYS[2] queue ready set   KEYS[3] queue seq
-- KEYS[4..] per candidate: job hash, job events
-- ARGV[1] event cap   ARGV[2] wake channel   ARGV[3] wake message
-- ARGV[4..] candidate job ids, in the order of KEYS
-- Returns the number of jobs promoted.
local now = now_ms()
local n = 0
for i = 4, #ARGV do
  local id = ARGV[i]
  local job = KEYS[4 + (i - 4) * 2]
  local score = redis.call('ZSCORE', KEYS[1], id)
  if score and tonumber(score) <= now then
    redis.call('ZREM', KEYS[1], id)
    if tonumber(redis.call('HGET', job, 'st')) == S_SCHEDULED then
      redis.call('HSET', job, 'st', S_QUEUED, 'ua', fmt(now))
      enqueue(job, KEYS[2], KEYS[3], id)
      add_event(job, KEYS[5 + (i - 4) * 2], ARGV[1], E_STATE, S_QUEUED, now)
      n = n + 1
    end
  end
end
if n > 0 then redis.call(PUBLISH, ARGV[2], ARGV[3]) end
return n
