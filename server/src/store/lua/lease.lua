-- lease: claims the candidate jobs (read from the head of the ready set by
-- the caller) that are still ready, and starts an attempt of each.
-- KEYS[1] queue ready set   KEYS[2] queue active set
-- KEYS[3..] per candidate: job hash, job events; last, the queue's paused flag
-- ARGV[1] worker id   ARGV[2] token nonce   ARGV[3] event cap
-- ARGV[4..] candidate job ids, in the order of KEYS
-- Returns one entry per claimed job: {id, token, attempt, lease expires ms,
-- deadline ms (0: none), kind, payload, max attempts, checkpoint or nil,
-- labels, trace context, lease ttl ms, ms it waited ready}; or 'paused'
if redis.call('EXISTS', KEYS[#KEYS]) == 1 then return 'paused' end
local now = now_ms()
local nows = fmt(now)
local ids = {}
for i = 4, #ARGV do ids[#ids + 1] = ARGV[i] end
if #ids == 0 then return {} end
-- Which candidates are still ready (one call); claim those (one call).
local scores = redis.call('ZMSCORE', KEYS[1], unpack(ids))
local claim = { 'ZREM', KEYS[1] }
for i = 1, #ids do
  if scores[i] then claim[#claim + 1] = ids[i] end
end
if #claim == 2 then return {} end
redis.call(unpack(claim))
local out = {}
local active = { 'ZADD', KEYS[2] }
for i = 1, #ids do
  if scores[i] then
    local id = ids[i]
    local job = KEYS[1 + i * 2]
    local ev = KEYS[2 + i * 2]
    local f = redis.call('HMGET', job, 'st', 'o', 'fen', 'a', 'seq', 'pg', 'k', 'cp', 'lb', 'tc',
      'ra', 'ct', 'p', 'pn', 'p1', 'p2', 'p3', 'p4', 'ei', 'wt')
    if tonumber(f[1]) == S_QUEUED then
      local _, ma, lt, to = options(f[2])
      local fence = tonumber(f[3] or '0') + 1
      local token = fmt(fence) .. '.' .. ARGV[2] .. fmt(i)
      local attempt = tonumber(f[4] or '0') + 1
      local seq = tonumber(f[5] or '0') + 1
      local le = now + lt
      local dl = 0
      if to > 0 then
        dl = now + to
        if dl < le then le = dl end
      end
      local les = fmt(le)
      -- ua: sa says it; dl: absent or 0 on a job that is not running.
      local set = { 'HSET', job, 'st', fmt(S_RUNNING), 'tok', token, 'w', ARGV[1], 'sa', nows,
        'fen', fmt(fence), 'a', fmt(attempt), 'seq', fmt(seq), 'le', les }
      if dl > 0 then
        set[#set + 1] = 'dl'
        set[#set + 1] = fmt(dl)
      end
      append_event(job, f[19], f[20], ev, ARGV[3], seq, E_STATE, S_RUNNING, now, attempt, f[6],
        nil, set)
      redis.call(unpack(set))
      active[#active + 1] = les
      active[#active + 1] = id
      local waited = now - tonumber(f[11] or f[12] or now)
      if waited < 0 then waited = 0 end
      out[#out + 1] = { id, token, attempt, les, fmt(dl), f[7] or '', payload_of(job, f, 13),
        ma, f[8] or false, f[9] or '', f[10] or '', lt, fmt(waited) }
    end
  end
end
if #active > 2 then redis.call(unpack(active)) end
return out
