-- events: reads a job's history for a watcher and marks the job watched
-- (field wt), so that every later event is published: a job nobody ever
-- watched publishes nothing. Marking and reading in one script means no
-- event can fall between them.
-- KEYS[1] job hash   KEYS[2] job events
-- ARGV[1] the first stream entry id to read ('(<seq>-0': after seq)
-- ARGV[2] the most entries to read
-- Returns {record fields st, ct, is, ei, e2 ... e6 (empty when the job does
-- not exist), the stream's first entry (to tell whether it was trimmed),
-- the entries read}
local f = redis.call('HMGET', KEYS[1], 'st', 'ct', 'is', 'ei', 'e2', 'e3', 'e4', 'e5', 'e6', 'wt')
if not f[1] then return { {}, {}, {} } end
if not f[10] then redis.call('HSET', KEYS[1], 'wt', 1) end
f[10] = nil
return { f, redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1),
  redis.call('XRANGE', KEYS[2], ARGV[1], '+', 'COUNT', ARGV[2]) }
