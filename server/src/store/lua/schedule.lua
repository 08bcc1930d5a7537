-- schedule: creates, updates, pauses, resumes or deletes a schedule (the
-- record's fields are listed in fire.lua). Create, update and resume set af
-- (every fire time up to it is handled) to now and put the schedule in
-- its queue's index at now, so the next scheduler pass plans its first
-- fire time; a paused schedule is indexed at +inf (never looked at).
-- KEYS[1] schedule record   KEYS[2] queue's schedule index   KEYS[3] its runs
-- ARGV[1] 'create' | 'update' | 'pause' | 'resume' | 'delete'
-- ARGV[2] schedule name   ARGV[3] spec (create, update)   ARGV[4] paused (create: 0/1)
-- Returns {'ok', record as HGETALL} | {'missing'} | {'exists'}
local op = ARGV[1]
local exists = redis.call('EXISTS', KEYS[1]) == 1
if op == 'create' then
  if exists then return { 'exists' } end
elseif not exists then
  return { 'missing' }
end
local now = fmt(now_ms())
if op == 'delete' then
  redis.call('DEL', KEYS[1], KEYS[3])
  redis.call('ZREM', KEYS[2], ARGV[2])
  return { 'ok', {} }
end
local paused = redis.call('HGET', KEYS[1], 'pa') == '1'
if op == 'create' then
  paused = ARGV[4] == '1'
  redis.call('HSET', KEYS[1], 'sp', ARGV[3], 'pa', paused and '1' or '0', 'ct', now, 'ua', now,
    'af', now, 'ver', '1', 'fi', '0', 'sk', '0', 'mi', '0', 'cur', '', 'buf', '0')
elseif op == 'update' then
  redis.call('HSET', KEYS[1], 'sp', ARGV[3], 'ua', now, 'af', now, 'buf', '0')
  redis.call('HINCRBY', KEYS[1], 'ver', 1)
elseif op == 'pause' then
  if paused then return { 'ok', redis.call('HGETALL', KEYS[1]) } end
  paused = true
  redis.call('HSET', KEYS[1], 'pa', '1', 'ua', now)
  redis.call('HINCRBY', KEYS[1], 'ver', 1)
elseif op == 'resume' then
  if not paused then return { 'ok', redis.call('HGETALL', KEYS[1]) } end
  paused = false
  redis.call('HSET', KEYS[1], 'pa', '0', 'ua', now, 'af', now, 'buf', '0')
  redis.call('HINCRBY', KEYS[1], 'ver', 1)
end
redis.call('ZADD', KEYS[2], paused and '+inf' or now, ARGV[2])
return { 'ok', redis.call('HGETALL', KEYS[1]) }
