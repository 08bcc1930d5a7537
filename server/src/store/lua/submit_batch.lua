-- submit_batch: creates several jobs of one queue (a SubmitBatch, all or
-- none; or single Submits written together, each on its own). Every
-- idempotency key is checked before anything is written: a key seen before
-- with the same request gives that job back (a duplicate, also within the
-- batch); one seen with a different request refuses the whole batch, or
-- only that job when they are independent.
-- KEYS[1] queue ready set   KEYS[2] queue sched   KEYS[3] queue seq
-- KEYS[4..] per job: job hash, idempotency record
-- ARGV[1] idempotency ttl ms   ARGV[2] wake channel   ARGV[3] wake message
-- ARGV[4] '1' when the jobs are independent
-- ARGV[5..] per job, in the order of KEYS: job id, '1' when an idempotency
--   key is given, request hash, run at ms (0: none), delay ms (0: none),
--   priority, the number N of job hash field/value entries, then those N
--   entries
-- Returns {'ok', {status, id, state}...} with status 'new', 'dup' or
-- 'conflict' (independent jobs only; state 0 unless new: the caller reads
-- a duplicate's) | {'conflict', job index (1-based), id}
--
-- The jobs are walked twice over ARGV (check, then write) rather than
-- copied into tables: at hundreds of jobs per call, copies were a good part
-- of the script's time.
local independent = ARGV[4] == '1'
local seen = {}
local dup, conflict = {}, {}
local i, a = 1, 5
while a <= #ARGV do
  local job, rec = KEYS[2 + i * 2], KEYS[3 + i * 2]
  if ARGV[a + 1] == '1' then
    local prior = seen[rec]
    if not prior then
      local r = redis.call('HMGET', rec, 'id', 'h')
      if r[1] then prior = { r[1], r[2] } end
    end
    if prior then
      if prior[2] == ARGV[a + 2] then
        dup[i] = prior[1]
      elseif independent then
        conflict[i] = prior[1]
      else
        return { 'conflict', i, prior[1] }
      end
    else
      seen[rec] = { ARGV[a], ARGV[a + 2] }
    end
  end
  if not dup[i] and not conflict[i] and redis.call('EXISTS', job) == 1 then
    if not independent then return { 'conflict', i, ARGV[a] } end
    conflict[i] = ARGV[a]
  end
  i, a = i + 1, a + 7 + tonumber(ARGV[a + 6])
end
local now = now_ms()
local nows = fmt(now)
local out = {}
local ready, ready_pr = {}, {}
local sched = { 'ZADD', KEYS[2] }
i, a = 1, 5
while a <= #ARGV do
  local last = a + 6 + tonumber(ARGV[a + 6])
  local id = ARGV[a]
  if dup[i] then
    out[i] = { 'dup', dup[i], 0 }
  elseif conflict[i] then
    out[i] = { 'conflict', conflict[i], 0 }
  else
    local state = create_job(KEYS[2 + i * 2], id, KEYS[2], ARGV[a + 3], ARGV[a + 4], a + 7, last,
      now, nows, sched)
    if ARGV[a + 1] == '1' then
      local rec = KEYS[3 + i * 2]
      redis.call('HSET', rec, 'id', id, 'h', ARGV[a + 2])
      redis.call('PEXPIRE', rec, ARGV[1])
    end
    if state == S_QUEUED then
      ready[#ready + 1] = id
      ready_pr[#ready_pr + 1] = tonumber(ARGV[a + 5])
    end
    out[i] = { 'new', id, state }
  end
  i, a = i + 1, last + 1
end
-- FIFO numbers for the whole batch in one call, then one ZADD per set.
if #ready > 0 then
  local base = redis.call('INCRBY', KEYS[3], #ready) - #ready
  local add = { 'ZADD', KEYS[1] }
  for k = 1, #ready do
    add[#add + 1] = fmt((1000 - ready_pr[k]) * 2199023255552 + base + k)
    add[#add + 1] = ready[k]
  end
  redis.call(unpack(add))
  redis.call('PUBLISH', ARGV[2], ARGV[3])
end
if #sched > 2 then redis.call(unpack(sched)) end
return { 'ok', out }
