-- Record a progress report of a running task (issue 15, item 6), fenced like complete: the
-- report replaces the last one on the record (field `progress`, a JSON object with the Redis
-- time `at` and the attempt it belongs to), a `progress` event is appended (one XADD, not
-- counted per minute: it is no state change), and a report that carries the lease token of
-- a pulled task (only GET /tasks/next hands it out) renews that lease: a worker reporting
-- progress is alive. Reports without it (in-process executors, which get only the attempt)
-- leave the lease to the consumer running the task, so a dead process still loses it after
-- LEASE_TIMEOUT.
-- KEYS: 1 task hash, 2 leases, 3 events, 4 stream:high, 5 stream:default, 6 stream:low
-- ARGV: 1 eval_id, 2 entry ('' = not given), 3 attempt ('' = not given), 4 the report, a
--       JSON object with at least one member ({"progress": n, ...}), 5 the progress as text
--       (for the event), 6 events maxlen, 7 lease ms to renew (0: none), 8 group,
--       9 the queue assumed ('' = default)
-- Returns {'ok', priority} or {'missing' | 'state' | 'stale' | 'expired' | 'queue', state or
-- queue} (see _fence.lua and wrong_queue in _lib.lua)
local id = ARGV[1]
local misrouted = wrong_queue(KEYS[1], ARGV[9])
if misrouted then return misrouted end
local now = now_ms()
local refused, rec = fence(KEYS[1], KEYS[2], id, ARGV[2], ARGV[3], now)
if refused then return refused end
redis.call('HSET', KEYS[1], 'progress',
  '{"at":' .. now .. ',"attempt":' .. rec[3] .. ',' .. string.sub(ARGV[4], 2))
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[6], '*', 'id', id, 'state', 'progress',
  'attempt', rec[3], 'progress', ARGV[5])
local lease_ms = tonumber(ARGV[7])
if lease_ms > 0 then
  redis.call('ZADD', KEYS[2], now + lease_ms, id)
  -- as renew.lua: the entry's idle time restarts, so XPENDING shows a live holder
  local STREAM = {high = KEYS[4], default = KEYS[5], low = KEYS[6]}
  local worker = redis.call('HGET', KEYS[1], 'worker')
  if worker then redis.pcall('XCLAIM', STREAM[rec[4]], ARGV[8], worker, 0, rec[2], 'JUSTID') end
end
return {'ok', rec[4]}
