-- lease: claims the candidate jobs (read from the head of the ready set by
-- the caller) that are still ready, and starts an attempt of each.
-- KEYS[1] queue ready set   KEYS[2] queue active set
-- KEYS[3..] per candidate: job hash, job events
-- ARGV[1] worker id   ARGV[2] token nonce   ARGV[3] event cap
-- ARGV[4..] candidate job ids, in the order of KEYS
-- Returns one entry per claimed job: {id, token, attempt, lease expires ms,
-- deadline ms (0: none), kind, payload, max attempts, checkpoint or nil,
-- labels, trace context, lease ttl ms, queue, ms it waited ready}
local now = now_ms()
local out = {}
for i = 4, #ARGV do
  local id = ARGV[i]
  local job = KEYS[3 + (i - 4) * 2]
  local ev = KEYS[4 + (i - 4) * 2]
  if redis.call('ZREM', KEYS[1], id) == 1 then
    local f = redis.call('HMGET', job, 'st', 'lt', 'to')
    if tonumber(f[1]) == S_QUEUED then
      local fence = redis.call('HINCRBY', job, 'fen', 1)
      local token = fence .. '.' .. ARGV[2] .. (i - 3)
      local attempt = redis.call('HINCRBY', job, 'a', 1)
      local le = now + tonumber(f[2])
      local dl = 0
      if tonumber(f[3] or '0') > 0 then
        dl = now + tonumber(f[3])
        if dl < le then le = dl end
        redis.call('HSET', job, 'dl', fmt(dl))
      end
      redis.call('HSET', job, 'st', S_RUNNING, 'tok', token, 'w', ARGV[1],
        'le', fmt(le), 'sa', fmt(now), 'ua', fmt(now))
      redis.call('ZADD', KEYS[2], fmt(le), id)
      add_event(job, ev, ARGV[3], E_STATE, S_RUNNING, now)
      local d = redis.call('HMGET', job, 'k', 'p', 'ma', 'cp', 'lb', 'tc', 'lt', 'q', 'ra')
      local waited = now - tonumber(d[9] or now)
      if waited < 0 then waited = 0 end
      out[#out + 1] = { id, token, attempt, fmt(le), fmt(dl), d[1] or '', d[2] or '',
        d[3] or '1', d[4] or false, d[5] or '', d[6] or '', d[7] or '0', d[8] or '', fmt(waited) }
    end
  end
end
return out
