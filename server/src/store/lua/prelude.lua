-- Prelude prepended to every jobctl script: constants and helpers only.
-- Nothing here builds a key name: every key a script touches arrives in KEYS.
-- PUBLISH (defined in front of this by scripts.rs) is the publish command:
-- PUBLISH on one Redis, SPUBLISH on a Redis Cluster (sharded pub/sub; every
-- channel a script publishes on lies in its queue's slot).
--
-- Job hash fields: k kind, p payload (or pn pieces of at most 64
-- bytes in p1, p2, ...: so the record stays a compact listpack), o the
-- options that never change (see options()), st state,
-- a attempt, ik idempotency key, lb labels, tc trace context, ct created, ra
-- run at, sa started, fa finished, ua updated, ex expires at (all ms since
-- the epoch on Redis's clock), tok lease token, fen fencing counter, w worker id,
-- le lease expiry, dl attempt deadline, pg progress, cp checkpoint,
-- res result, err error, cr cancel requested, crr cancel reason,
-- seq last event sequence number, is the state the job was created in
-- (absent: QUEUED),
-- ei the last event kept in the record, e2, e3, ... those events, wt 1 once
-- someone watches the job (its events are published only then).
-- le and dl are absent or 0 when there is no lease or deadline; a and fen
-- absent are 0; ra absent is ct; the time of the last change is the latest
-- of ua, ct, sa and fa (a lease or completion does not write ua). A new job is written with as few
-- fields as possible: every field costs memory and a lookup in each script.
--
-- A job's first event (seq 1: created QUEUED or SCHEDULED) is not written
-- to its stream: it follows from the record (is, ct), so a queued job costs
-- no stream at all. Its next events, up to INLINE_LAST, are kept in the
-- record too (fields e2, e3, ...), as long as each fits one listpack entry
-- and none before went to the stream: a job that runs and finishes without
-- much to say never gets a stream. The reader puts them back in order.
local S_SCHEDULED, S_QUEUED, S_RUNNING = 1, 2, 3
local S_SUCCEEDED, S_FAILED, S_CANCELLED = 4, 5, 6
local E_STATE, E_PROGRESS, E_CANCEL = 1, 2, 3
local INLINE_LAST = 6
-- Redis's default hash-max-listpack-value: a longer value would turn the
-- record into a hash table.
local INLINE_BYTES = 64

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Integers as plain digits (tostring would give 1.7e+12), each formatted
-- once per script call: printf was a tenth of Redis's time in the hot
-- scripts, and a batch repeats the same few numbers (states, attempts,
-- sequence numbers, deadlines). Every number a hot path hands to
-- redis.call or joins into a string goes through here, since Lua formats
-- a bare number with printf each time.
local FORMATTED = {}
local function fmt(n)
  if n ~= n then return 'nan' end -- NaN cannot be a table key
  local s = FORMATTED[n]
  if not s then
    s = string.format('%.0f', n)
    FORMATTED[n] = s
  end
  return s
end

-- A field value that may be a number or already a string.
local function str(v)
  if type(v) == 'string' then return v end
  return fmt(v)
end

-- A job's options from its field o, 'pr,ma,lt,to,rt,bi,bm,bx,bj': priority,
-- max attempts, lease ttl ms, timeout ms (0: none), retention ms, backoff
-- initial ms, max ms, multiplier and jitter. As numbers, in that order.
local function options(o)
  local pr, ma, lt, to, rt, bi, bm, bx, bj = string.match(o or '',
    '^([^,]*),([^,]*),([^,]*),([^,]*),([^,]*),([^,]*),([^,]*),([^,]*),([^,]*)$')
  return tonumber(pr) or 0, tonumber(ma) or 1, tonumber(lt) or 0, tonumber(to) or 0,
    tonumber(rt) or 0, tonumber(bi) or 0, tonumber(bm) or 0, tonumber(bx) or 1, tonumber(bj) or 0
end

local function is_terminal(st)
  return st == S_SUCCEEDED or st == S_FAILED or st == S_CANCELLED
end

-- An event as a record field's value, or nil when it must go to the
-- stream: 'kind,state,time,attempt,progress length,tag,' then the progress
-- and a tail, the error (tag 'e') or the result (tag 'r').
local function inline_value(ei, seq, kind, state, nows, attempt, pg, extra)
  if seq > INLINE_LAST or seq ~= tonumber(ei or '1') + 1 then return nil end
  local tag, tail = '', ''
  if extra then
    if #extra ~= 2 then return nil end
    tag, tail = extra[1], extra[2]
  end
  pg = pg or ''
  local head = fmt(kind) .. ',' .. fmt(state) .. ',' .. nows .. ',' .. str(attempt or '0') .. ','
    .. fmt(#pg) .. ',' .. tag .. ','
  if #head + #pg + #tail > INLINE_BYTES then return nil end
  return head .. pg .. tail
end

-- Records the event numbered `seq` and tells watchers, if the job has any
-- (`wt`, see the top). `ei` is the job's last inline event; `attempt` and
-- `pg` are its attempt and progress after the event; `extra` is
-- {'e', error} or {'r', result}. An inline event's fields are appended to
-- `set` (the caller's pending HSET arguments) when given, else written at
-- once.
local function append_event(job, ei, wt, ev, cap, seq, kind, state, now, attempt, pg, extra, set)
  local v = inline_value(ei, seq, kind, state, fmt(now), attempt, pg, extra)
  if v and set then
    local n = #set
    local seqs = fmt(seq)
    set[n + 1], set[n + 2], set[n + 3], set[n + 4] = 'e' .. seqs, v, 'ei', seqs
  elseif v then
    local seqs = fmt(seq)
    redis.call('HSET', job, 'e' .. seqs, v, 'ei', seqs)
  else
    local args = { 'XADD', ev, 'MAXLEN', '~', cap, seq .. '-0',
      'k', kind, 's', state, 't', fmt(now), 'a', attempt or '0' }
    if pg then
      args[#args + 1] = 'p'
      args[#args + 1] = pg
    end
    if extra then
      for i = 1, #extra do args[#args + 1] = extra[i] end
    end
    redis.call(unpack(args))
  end
  -- Watchers learn of it on a channel named after the stream (not a key).
  if wt then redis.call(PUBLISH, ev, seq) end
end

-- Records an event with the next sequence number (see append_event).
local function add_event(job, ev, cap, kind, state, now, extra)
  local seq = redis.call('HINCRBY', job, 'seq', 1)
  local f = redis.call('HMGET', job, 'a', 'pg', 'ei', 'wt')
  append_event(job, f[3], f[4], ev, cap, seq, kind, state, now, f[1], f[2], extra)
  return seq
end

-- The payload of a record read with HMGET ..., 'p', 'pn', 'p1', 'p2', 'p3',
-- 'p4' from `f[i]` on: whole, or put together from its pieces.
local function payload_of(job, f, i)
  if f[i] then return f[i] end
  local n = tonumber(f[i + 1] or '0')
  if n == 0 then return '' end
  local parts = {}
  for j = 1, math.min(n, 4) do parts[j] = f[i + 1 + j] or '' end
  if n > 4 then
    local names = {}
    for j = 5, n do names[#names + 1] = 'p' .. j end
    local more = redis.call('HMGET', job, unpack(names))
    for j = 1, #more do parts[#parts + 1] = more[j] or '' end
  end
  return table.concat(parts)
end

-- Ready set score: higher priority first, FIFO within one priority.
local function enqueue(job, ready, seqkey, id)
  local pr = options(redis.call('HGET', job, 'o'))
  local s = redis.call('INCR', seqkey)
  redis.call('ZADD', ready, fmt((1000 - pr) * 2199023255552 + s), id)
end

-- Moves a job to a terminal state and indexes it for the retention sweep
-- (which deletes its keys: they carry no expiry of their own).
local function finish(job, ev, done, id, state, now, cap, ev_extra)
  local _, _, _, _, rt = options(redis.call('HGET', job, 'o'))
  local ex = now + rt
  redis.call('HSET', job, 'st', state, 'fa', fmt(now), 'ua', fmt(now), 'ex', fmt(ex),
    'le', 0, 'dl', 0)
  redis.call('ZADD', done, fmt(ex), id)
  add_event(job, ev, cap, E_STATE, state, now, ev_extra)
end

-- Ends a running attempt that failed: CANCELLED when a cancel was asked,
-- else SCHEDULED (backoff) or QUEUED (no delay) while attempts remain, else
-- FAILED (a dead letter). retry_after < 0 means "use the job's backoff".
-- Returns {state, next run at ms (0 when none)}.
local function fail_attempt(k, id, err, retryable, retry_after, rnd, cap, now, chan, msg)
  redis.call('ZREM', k.active, id)
  redis.call('HDEL', k.job, 'le', 'dl')
  redis.call('HSET', k.job, 'err', err)
  if redis.call('HGET', k.job, 'cr') == '1' then
    finish(k.job, k.ev, k.done, id, S_CANCELLED, now, cap, { 'e', err })
    return { S_CANCELLED, 0 }
  end
  local f = redis.call('HMGET', k.job, 'a', 'o')
  local a = tonumber(f[1] or '0')
  local _, ma, _, _, _, bi, bm, bx, bj = options(f[2])
  if retryable and a < ma then
    local delay = retry_after
    if delay < 0 then
      local d = bi * (bx ^ (a - 1))
      if d > bm then d = bm end
      d = d * (1 + bj * (2 * rnd - 1))
      if d < 0 then d = 0 end
      delay = math.floor(d)
    end
    if delay <= 0 then
      redis.call('HSET', k.job, 'st', S_QUEUED, 'ra', fmt(now), 'ua', fmt(now))
      enqueue(k.job, k.ready, k.seq, id)
      add_event(k.job, k.ev, cap, E_STATE, S_QUEUED, now, { 'e', err })
      redis.call(PUBLISH, chan, msg)
      return { S_QUEUED, now }
    end
    local run_at = now + delay
    redis.call('HSET', k.job, 'st', S_SCHEDULED, 'ra', fmt(run_at), 'ua', fmt(now))
    redis.call('ZADD', k.sched, fmt(run_at), id)
    add_event(k.job, k.ev, cap, E_STATE, S_SCHEDULED, now, { 'e', err })
    return { S_SCHEDULED, run_at }
  end
  redis.call('ZADD', k.dead, fmt(now), id)
  finish(k.job, k.ev, k.done, id, S_FAILED, now, cap, { 'e', err })
  return { S_FAILED, 0 }
end

-- Checks a lease token. Returns nil when the caller holds the running lease,
-- else the reply to give: {'missing'} or {'stale', state}.
local function check_lease(job, token)
  local f = redis.call('HMGET', job, 'st', 'tok')
  if not f[1] then return { 'missing' } end
  if tonumber(f[1]) ~= S_RUNNING or f[2] ~= token then
    return { 'stale', tonumber(f[1]) }
  end
  return nil
end

-- Ends the running attempt of `job` with success (complete, complete_batch).
-- A retried Complete of the attempt that already succeeded is answered
-- again, so a worker that lost the first reply does not see an error.
-- With `defer` (a batch), the job's moves between the queue's sets are
-- added to defer.active (ZREM) and defer.done (ZADD) for one call each.
-- Returns {'ok', state, ms the attempt ran (-1: already completed)}
--       | {'missing'} | {'stale', state}
local function complete_one(job, ev, active, done, id, token, result, cap, now, defer)
  local f = redis.call('HMGET', job, 'st', 'tok', 'sa', 'o', 'seq', 'a', 'pg', 'ei', 'wt')
  if not f[1] then return { 'missing' } end
  local st = tonumber(f[1])
  if st ~= S_RUNNING or f[2] ~= token then
    if st == S_SUCCEEDED and f[2] == token then return { 'ok', S_SUCCEEDED, -1 } end
    return { 'stale', st }
  end
  local ran = now - tonumber(f[3] or now)
  local _, _, _, _, rt = options(f[4])
  local ex = fmt(now + rt)
  local seq = tonumber(f[5] or '0') + 1
  local nows = fmt(now)
  -- As finish() does, in fewer calls.
  local set = { 'HSET', job, 'res', result, 'st', fmt(S_SUCCEEDED), 'fa', nows, 'ex', ex,
    'seq', fmt(seq), 'le', '0', 'dl', '0' }
  append_event(job, f[8], f[9], ev, cap, seq, E_STATE, S_SUCCEEDED, now, f[6], f[7],
    { 'r', result }, set)
  redis.call(unpack(set))
  if defer then
    defer.active[#defer.active + 1] = id
    defer.done[#defer.done + 1] = ex
    defer.done[#defer.done + 1] = id
  else
    redis.call('ZREM', active, id)
    redis.call('ZADD', done, ex, id)
  end
  return { 'ok', S_SUCCEEDED, fmt(ran) }
end

-- Creates job `id` (submit, submit_batch): its record from ARGV[first..last]
-- (field/value pairs, passed on without copying), QUEUED in the ready set
-- or SCHEDULED. Its first event (seq 1) is the record itself (is, ct), not
-- a stream entry, and nobody can be watching a job that did not exist yet.
-- run_at_arg / delay_arg as submit's ARGV (0: none); nows is fmt(now).
-- A QUEUED job still needs its place in the ready set (the caller's:
-- one INCR/ZADD, or one per batch); a SCHEDULED one is added to `sched`
-- (a pending ZADD argument list) when given, else at once. Returns its
-- state.
local function create_job(job, id, sched_key, run_at_arg, delay_arg, first, last, now, nows,
                          sched)
  local run_at = now
  if run_at_arg ~= '0' then
    run_at = tonumber(run_at_arg)
  elseif delay_arg ~= '0' then
    run_at = now + tonumber(delay_arg)
  end
  if run_at <= now then
    redis.call('HSET', job, 'st', S_QUEUED, 'seq', '1', 'ct', nows, unpack(ARGV, first, last))
    return S_QUEUED
  end
  local ras = fmt(run_at)
  redis.call('HSET', job, 'st', S_SCHEDULED, 'seq', '1', 'ct', nows, 'ra', ras, 'is', S_SCHEDULED,
    unpack(ARGV, first, last))
  if sched then
    sched[#sched + 1] = ras
    sched[#sched + 1] = id
  else
    redis.call('ZADD', sched_key, ras, id)
  end
  return S_SCHEDULED
end
