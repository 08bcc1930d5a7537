-- fire: one step of a schedule (store/schedules.rs, Fire), or a
-- TriggerSchedule; a job it makes is written as submit_batch writes one
-- (create_job, enqueue), with its idempotency record.
-- Schedule record fields: sp spec (protobuf), pa paused (0/1), ct created,
-- ua updated, af every fire time up to this one is handled, ver version, fi
-- fired, sk skipped, mi missed, cur the latest run's job id, buf a buffered
-- fire time (0: none). Runs list entries: 'fire ms,outcome,job id'.
-- KEYS[1] schedule record   KEYS[2] queue's schedule index   KEYS[3] its runs
-- KEYS[4] new job hash   KEYS[5] its idempotency record (KEYS[1]: none)
-- KEYS[6] queue ready   KEYS[7] queue sched   KEYS[8] queue seq   KEYS[9] queue done
-- KEYS[10] the latest run's job hash   KEYS[11] its events (KEYS[1]: none)
-- ARGV[1] 'tick' | 'release' | 'advance' | 'trigger'   ARGV[2] schedule name
-- ARGV[3] expected ver   ARGV[4] expected af   ARGV[5] expected cur
-- ARGV[6] fire time ms   ARGV[7] new af   ARGV[8] missed
-- ARGV[9] next look ms ('+inf': never)   ARGV[10] recheck ms (while buffered)
-- ARGV[11] overlap (1 skip, 2 allow, 3 cancel previous, 4 buffer one)
-- ARGV[12] event cap   ARGV[13] wake channel   ARGV[14] wake message
-- ARGV[15] idempotency ttl ms   ARGV[16] runs kept   ARGV[17] job id
-- ARGV[18] request hash   ARGV[19] run at ms (0: now)   ARGV[20..] job fields
-- Returns {'made', job id, duplicate 0/1} | {'skipped'} | {'buffered'}
-- | {'waiting'} | {'advanced'} | {'stale'} | {'early'} | {'missing'}
local O_SKIP, O_ALLOW, O_CANCEL, O_BUFFER = 1, 2, 3, 4
local R_FIRED, R_TRIGGERED, R_SKIPPED, R_BUFFERED = 1, 2, 3, 4
local action = ARGV[1]
local f = redis.call('HMGET', KEYS[1], 'ver', 'af', 'cur', 'pa', 'buf')
if not f[1] then return { 'missing' } end
local now = now_ms()
local nows = fmt(now)
local cur = f[3] or ''

local function run(fire, outcome, id)
  redis.call('LPUSH', KEYS[3], fire .. ',' .. outcome .. ',' .. (id or ''))
  redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[16]) - 1)
end

local function make()
  local keyed = KEYS[5] ~= KEYS[1]
  if keyed then
    local r = redis.call('HMGET', KEYS[5], 'id', 'h')
    if r[1] then
      redis.call('HSET', KEYS[1], 'cur', r[1])
      return r[1], 1
    end
  end
  local id = ARGV[17]
  local state = create_job(KEYS[4], id, KEYS[7], ARGV[19], '0', 20, #ARGV, now, nows, nil)
  if state == S_QUEUED then
    enqueue(KEYS[4], KEYS[6], KEYS[8], id)
    redis.call(PUBLISH, ARGV[13], ARGV[14])
  end
  if keyed then
    redis.call('HSET', KEYS[5], 'id', id, 'h', ARGV[18])
    redis.call('PEXPIRE', KEYS[5], ARGV[15])
  end
  redis.call('HSET', KEYS[1], 'cur', id)
  return id, 0
end

if action == 'trigger' then
  local id, dup = make()
  run(nows, R_TRIGGERED, id)
  return { 'made', id, dup }
end

if f[1] ~= ARGV[3] or (f[2] or '0') ~= ARGV[4] or cur ~= ARGV[5] or f[4] == '1' then
  return { 'stale' }
end
local fire = tonumber(ARGV[6])
if action ~= 'advance' and fire > now then return { 'early' } end

local function previous_active()
  if cur == '' then return false end
  local st = tonumber(redis.call('HGET', KEYS[10], 'st'))
  return st ~= nil and not is_terminal(st)
end

local buf = f[5] or '0'
local out
if action == 'release' then
  if buf ~= ARGV[6] then return { 'stale' } end
  if previous_active() then
    out = { 'waiting' }
  else
    local id, dup = make()
    redis.call('HSET', KEYS[1], 'buf', '0')
    redis.call('HINCRBY', KEYS[1], 'fi', 1)
    run(ARGV[6], R_FIRED, id)
    buf = '0'
    out = { 'made', id, dup }
  end
elseif action == 'tick' then
  local overlap = tonumber(ARGV[11])
  local active = overlap ~= O_ALLOW and previous_active()
  if active and overlap == O_SKIP then
    redis.call('HINCRBY', KEYS[1], 'sk', 1)
    run(ARGV[6], R_SKIPPED)
    out = { 'skipped' }
  elseif active and overlap == O_BUFFER then
    if buf == '0' then
      redis.call('HSET', KEYS[1], 'buf', ARGV[6])
      buf = ARGV[6]
      run(ARGV[6], R_BUFFERED)
      out = { 'buffered' }
    else
      redis.call('HINCRBY', KEYS[1], 'sk', 1)
      run(ARGV[6], R_SKIPPED)
      out = { 'skipped' }
    end
  else
    if active then
      cancel_job(KEYS[10], KEYS[11], KEYS[6], KEYS[7], KEYS[9], cur,
        'superseded by the next fire of its schedule', ARGV[12], now)
    end
    local id, dup = make()
    redis.call('HINCRBY', KEYS[1], 'fi', 1)
    run(ARGV[6], R_FIRED, id)
    out = { 'made', id, dup }
  end
else
  out = { 'advanced' }
end
if action ~= 'release' then
  redis.call('HSET', KEYS[1], 'af', ARGV[7])
end
if ARGV[8] ~= '0' then redis.call('HINCRBY', KEYS[1], 'mi', ARGV[8]) end
-- When to look again: the next fire time, or sooner while one is buffered.
local next = ARGV[9]
if buf ~= '0' and (next == '+inf' or tonumber(ARGV[10]) < tonumber(next)) then
  next = ARGV[10]
end
redis.call('ZADD', KEYS[2], next, ARGV[2])
return out
