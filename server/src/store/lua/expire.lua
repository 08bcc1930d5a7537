-- expire: deletes finished jobs whose retention has passed, with their
-- history and index entries. Safe to run in every replica at once.
-- KEYS[1] queue done set   KEYS[2] queue dead set
-- KEYS[3..] per candidate: job hash, job events; last, the queue's all index
-- ARGV[1..] candidate job ids, in the order of KEYS
-- Returns the number of jobs deleted.
local now = now_ms()
local n = 0
for i = 1, #ARGV do
  local id = ARGV[i]
  local score = redis.call('ZSCORE', KEYS[1], id)
  if score and tonumber(score) <= now then
    redis.call('ZREM', KEYS[1], id)
    redis.call('ZREM', KEYS[2], id)
    redis.call('ZREM', KEYS[#KEYS], id)
    redis.call('DEL', KEYS[3 + (i - 1) * 2], KEYS[4 + (i - 1) * 2])
    n = n + 1
  end
end
return n
