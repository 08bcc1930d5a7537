-- submit_batch: creates several jobs of one queue, all or none. Every
-- idempotency key is checked before anything is written: a key seen before
-- with the same request gives that job back (a duplicate, also within the
-- batch); one seen with a different request refuses the whole batch.
-- KEYS[1] queue ready set   KEYS[2] queue sched   KEYS[3] queue seq
-- KEYS[4..] per job: job hash, idempotency record
-- ARGV[1] idempotency ttl ms   ARGV[2] wake channel   ARGV[3] wake message
-- ARGV[4..] per job, in the order of KEYS: job id, '1' when an idempotency
--   key is given, request hash, run at ms (0: none), delay ms (0: none),
--   priority, the number N of job hash field/value entries, then those N
--   entries
-- Returns {'ok', {status, id, state}...} with status 'new' or 'dup' (state 0
-- for a duplicate: the caller reads it) | {'conflict', job index (1-based), id}
local jobs = {}
local a = 4
while a <= #ARGV do
  local n = tonumber(ARGV[a + 6])
  jobs[#jobs + 1] = { id = ARGV[a], idem = ARGV[a + 1] == '1', hash = ARGV[a + 2],
    run_at = ARGV[a + 3], delay = ARGV[a + 4], pr = tonumber(ARGV[a + 5]), first = a + 7, n = n }
  a = a + 7 + n
end
-- Check every job before writing any.
local seen = {}
local out = {}
for i, j in ipairs(jobs) do
  local k = 4 + (i - 1) * 2
  j.job, j.rec = KEYS[k], KEYS[k + 1]
  if j.idem then
    local prior = seen[j.rec]
    if not prior then
      local r = redis.call('HMGET', j.rec, 'id', 'h')
      if r[1] then prior = { id = r[1], hash = r[2] } end
    end
    if prior then
      if prior.hash ~= j.hash then return { 'conflict', i, prior.id } end
      j.dup = prior.id
    else
      seen[j.rec] = { id = j.id, hash = j.hash }
    end
  end
  if not j.dup and redis.call('EXISTS', j.job) == 1 then return { 'conflict', i, j.id } end
end
local now = now_ms()
local nows = fmt(now)
local defer = { ready = {}, sched = { 'ZADD', KEYS[2] } }
for _, j in ipairs(jobs) do
  if j.dup then
    out[#out + 1] = { 'dup', j.dup, 0 }
  else
    local fields = {}
    for f = j.first, j.first + j.n - 1 do fields[#fields + 1] = ARGV[f] end
    local state = create_job(j.job, KEYS[1], KEYS[2], KEYS[3], j.id, j.run_at, j.delay, fields,
      now, nows, j.pr, defer)
    if j.idem then
      redis.call('HSET', j.rec, 'id', j.id, 'h', j.hash)
      redis.call('PEXPIRE', j.rec, ARGV[1])
    end
    out[#out + 1] = { 'new', j.id, state }
  end
end
-- FIFO numbers for the whole batch in one call, then one ZADD per set.
if #defer.ready > 0 then
  local last = redis.call('INCRBY', KEYS[3], #defer.ready)
  local add = { 'ZADD', KEYS[1] }
  for k, e in ipairs(defer.ready) do
    add[#add + 1] = fmt((1000 - e[2]) * 2199023255552 + last - #defer.ready + k)
    add[#add + 1] = e[1]
  end
  redis.call(unpack(add))
  redis.call('PUBLISH', ARGV[2], ARGV[3])
end
if #defer.sched > 2 then redis.call(unpack(defer.sched)) end
return { 'ok', out }
