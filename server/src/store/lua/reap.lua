-- reap: ends the attempts whose lease expired (the worker died, hung or lost
-- its connection), as a retryable failure. Safe to run in every replica at
-- once: a job is reaped only if its lease is still expired on Redis's clock.
-- KEYS[1] queue active set   KEYS[2] queue sched set   KEYS[3] queue dead set
-- KEYS[4] queue done set     KEYS[5] queue ready set   KEYS[6] queue seq
-- KEYS[7..] per candidate: job hash, job events
-- ARGV[1] event cap   ARGV[2] random in [0, 1)   ARGV[3] lease-expired error
-- ARGV[4] timeout error   ARGV[5] wake channel   ARGV[6] wake message
-- ARGV[7..] candidate job ids, in the order of KEYS
-- Returns the ids reaped.
local now = now_ms()
local out = {}
for i = 7, #ARGV do
  local id = ARGV[i]
  local job = KEYS[7 + (i - 7) * 2]
  local score = redis.call('ZSCORE', KEYS[1], id)
  if score and tonumber(score) <= now then
    local f = redis.call('HMGET', job, 'st', 'le', 'dl')
    if tonumber(f[1]) ~= S_RUNNING then
      redis.call('ZREM', KEYS[1], id)
    elseif tonumber(f[2] or '0') <= now then
      local err = ARGV[3]
      local dl = tonumber(f[3] or '0')
      if dl > 0 and dl <= now then err = ARGV[4] end
      redis.call('HDEL', job, 'tok')
      local k = { job = job, ev = KEYS[8 + (i - 7) * 2], active = KEYS[1], sched = KEYS[2],
        dead = KEYS[3], done = KEYS[4], ready = KEYS[5], seq = KEYS[6] }
      fail_attempt(k, id, err, true, -1, tonumber(ARGV[2]), ARGV[1], now, ARGV[5], ARGV[6])
      out[#out + 1] = id
    end
  end
end
return out
