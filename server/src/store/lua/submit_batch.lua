-- submit_batch: creates several jobs of one queue (a SubmitBatch, all or
-- none; or single Submits written together, each on its own). Every
-- idempotency key is checked before anything is written: a key seen before
-- with the same request gives that job back (a duplicate, also within the
-- batch); one seen with a different request refuses the whole batch, or
-- only that job when they are independent. Job ids are made by the server
-- (ULIDs: 80 random bits per millisecond), so a new job's key is not
-- checked for existence.
-- KEYS[1] queue ready set   KEYS[2] queue sched   KEYS[3] queue seq
-- KEYS[4..3+N] the N jobs' hashes, then the idempotency records of the
--   jobs that have a key, in the same order; last, the queue's all index
-- ARGV[1] idempotency ttl ms   ARGV[2] wake channel   ARGV[3] wake message
-- ARGV[4] '1' when the jobs are independent   ARGV[5] N, the number of jobs
-- ARGV[6..] per job, in the order of KEYS: job id, request hash ('' when
--   it has no idempotency key), run at ms (0: none), delay ms (0: none),
--   priority, the number M of job hash field/value entries, then those M
--   entries
-- Returns {'ok', {per job: its state when created | {'dup', id} |
-- {'conflict', id} (independent jobs only)}}
-- | {'conflict', job index (1-based), id}
--
-- The jobs are walked twice over ARGV (check, then write) rather than
-- copied into tables: at hundreds of jobs per call, copies were a good part
-- of the script's time.
local independent = ARGV[4] == '1'
local n = tonumber(ARGV[5])
local seen, dup, conflict, rec_of = {}, {}, {}, {}
local next_rec = 4 + n
local a = 6
for i = 1, n do
  local hash = ARGV[a + 1]
  if hash ~= '' then
    local rec = KEYS[next_rec]
    next_rec = next_rec + 1
    rec_of[i] = rec
    local prior = seen[rec]
    if not prior then
      local r = redis.call('HMGET', rec, 'id', 'h')
      if r[1] then prior = { r[1], r[2] } end
    end
    if prior then
      if prior[2] == hash then
        dup[i] = prior[1]
      elseif independent then
        conflict[i] = prior[1]
      else
        return { 'conflict', i, prior[1] }
      end
    else
      seen[rec] = { ARGV[a], hash }
    end
  end
  a = a + 6 + tonumber(ARGV[a + 5])
end
local now = now_ms()
local nows = fmt(now)
local out = {}
local ready, ready_pr = {}, {}
local all = { 'ZADD', KEYS[#KEYS] }
local sched = { 'ZADD', KEYS[2] }
a = 6
for i = 1, n do
  local last = a + 5 + tonumber(ARGV[a + 5])
  local id = ARGV[a]
  if dup[i] then
    out[i] = { 'dup', dup[i] }
  elseif conflict[i] then
    out[i] = { 'conflict', conflict[i] }
  else
    local state = create_job(KEYS[3 + i], id, KEYS[2], ARGV[a + 2], ARGV[a + 3], a + 6, last, now,
      nows, sched)
    local rec = rec_of[i]
    if rec then
      redis.call('HSET', rec, 'id', id, 'h', ARGV[a + 1])
      redis.call('PEXPIRE', rec, ARGV[1])
    end
    if state == S_QUEUED then
      ready[#ready + 1] = id
      ready_pr[#ready_pr + 1] = tonumber(ARGV[a + 4])
    end
    all[#all + 1] = '0'
    all[#all + 1] = id
    out[i] = state
  end
  a = last + 1
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
  redis.call(PUBLISH, ARGV[2], ARGV[3])
end
if #sched > 2 then redis.call(unpack(sched)) end
if #all > 2 then redis.call(unpack(all)) end
return { 'ok', out }
