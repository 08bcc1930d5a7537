-- cancel: ends a job that is not running; asks a running one's worker to stop.
-- KEYS[1] job hash   KEYS[2] job events   KEYS[3] queue ready set
-- KEYS[4] queue sched set   KEYS[5] queue done set
-- ARGV[1] job id   ARGV[2] reason   ARGV[3] event cap
-- Returns {'ok', state, cancel requested (0/1)} | {'missing'}
local r = cancel_job(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[1], ARGV[2], ARGV[3],
  now_ms())
if not r then return { 'missing' } end
return { 'ok', r[1], r[2] }
