-- complete: ends a running attempt with success.
-- KEYS[1] job hash   KEYS[2] job events   KEYS[3] queue active set
-- KEYS[4] queue done set (retention index)
-- ARGV[1] job id   ARGV[2] lease token   ARGV[3] event cap   ARGV[4] result
-- Returns {'ok', state, ms the attempt ran (-1: already completed)}
--       | {'missing'} | {'stale', state}
return complete_one(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2], ARGV[4],
  ARGV[3], now_ms())
