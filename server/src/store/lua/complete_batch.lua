-- complete_batch: ends several running attempts of one queue with success,
-- each checked against its own lease token exactly as complete does (a
-- stale one is refused and changes nothing; the others go ahead).
-- KEYS[1] queue active set   KEYS[2] queue done set
-- KEYS[3..] per job: job hash, job events
-- ARGV[1] event cap
-- ARGV[2..] per job, in the order of KEYS: job id, lease token, result
-- Returns one reply per job, as complete's.
local now = now_ms()
local out = {}
local defer = { active = { 'ZREM', KEYS[1] }, done = { 'ZADD', KEYS[2] } }
local n = (#ARGV - 1) / 3
for i = 0, n - 1 do
  local a = 2 + i * 3
  out[#out + 1] = complete_one(KEYS[3 + i * 2], KEYS[4 + i * 2], KEYS[1], KEYS[2],
    ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[1], now, defer)
end
if #defer.active > 2 then redis.call(unpack(defer.active)) end
if #defer.done > 2 then redis.call(unpack(defer.done)) end
return out
