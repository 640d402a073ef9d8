-- Finish one callbacks-stream entry: XACK + XDEL, count the outcome per target in the
-- task's queue counters, and record the outcome on the task (only if its record still
-- exists: never create a partial hash). An entry already acked (another sender took it
-- over and finished first) is removed but not counted again.
-- KEYS: 1 callbacks stream, 2 counters of the task's queue, 3 task hash
-- ARGV: 1 group, 2 entry id, 3 targets delivered, 4 targets given up on,
--       5 status for the record ('delivered' | 'failed' | 'skipped'; '' = record nothing),
--       6 attempts (POSTs to the target that took most), 7 error ('' = none)
-- Returns 1 when this call finished the entry, 0 when it was already finished.
local acked = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
if acked == 0 then return 0 end
if tonumber(ARGV[3]) > 0 then
  redis.call('HINCRBY', KEYS[2], 'total:callbacks_delivered', ARGV[3])
end
if tonumber(ARGV[4]) > 0 then
  redis.call('HINCRBY', KEYS[2], 'total:callbacks_failed', ARGV[4])
end
if ARGV[5] ~= '' and redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('HSET', KEYS[3], 'cb_status', ARGV[5], 'cb_attempts', ARGV[6])
  if ARGV[7] ~= '' then
    redis.call('HSET', KEYS[3], 'cb_error', ARGV[7])
  else
    redis.call('HDEL', KEYS[3], 'cb_error')
  end
end
return 1
