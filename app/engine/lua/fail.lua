-- Record a failed attempt: fenced; retry with backoff (state `retrying`, due time in the
-- scheduled zset, payload moved into the record) or bury it in the DLQ (state `failed`).
-- Retry n waits min(max, base * exp^(n-1)); jitter keeps half and randomises the rest.
-- KEYS: 1 task hash, 2 leases, 3 events, 4 counters, 5 scheduled, 6 dlq,
--       7 stream:high, 8 stream:default, 9 stream:low, 10 dlq index, 11 expiries (a
--       retrying task with an expiry waits there again, issue 15), 12-14 tenant streams
--       high/default/low (a tenant's task's entry), 15… the queue's effects (below)
-- ARGV: 1 eval_id, 2 entry, 3 attempt, 4 error, 5 retry? ('1'/'0'), 6 default max retries,
--       7 base ms, 8 exponential base, 9 max ms, 10 jitter random [0,1) or -1,
--       11 failure ttl s, 12 group, 13 events maxlen, 14 published result JSON,
--       15 detail (executor answer or traceback), 16 schedule channel,
--       17 answer for the task's reply queue ('' for none: if it fails for good, an empty
--       item carrying the error, see answer_numbered in _lib.lua), 18 the policy's interval
--       list in ms, comma-separated ('' for none); a task's own `retry_intervals` (seconds)
--       win over it, and either replaces the exponential formula (the last one repeats),
--       19 the queue assumed ('' = default), 20 '1': tell the wake channel (16) 'release',
--       a slot is free (the queue has a QUEUE_MAX_IN_FLIGHT)
-- then the queue's effects (engine/keys.py QueueKeys.effects: what finished() and the
-- numbered-queue helpers of _lib.lua touch: dependants released into the schedule, stats,
-- callbacks and relays, the expiring zset, index, aliases, the reply queue's keys). Also
-- touched: records of this queue (dependants of the task, read from its record).
-- Returns {'retrying', priority, due ms} | {'failed', priority} | {'failed', priority, 'lost',
-- reason} (a retry was due but
-- the task's stream entry, and with it the payload, was deleted: dead-lettered as lost) |
-- {'missing' | 'state' | 'stale' | 'expired', state}
local id = ARGV[1]
local STREAM = {high = KEYS[7], default = KEYS[8], low = KEYS[9]}
local TENANTS = {high = KEYS[12], default = KEYS[13], low = KEYS[14]}
local misrouted = wrong_queue(KEYS[1], ARGV[19])
if misrouted then return misrouted end
local now = now_ms()
local refused, rec = fence(KEYS[1], KEYS[2], id, ARGV[2], ARGV[3], now)
if refused then return refused end
local k_stream, prio, attempts = (rec[6] and TENANTS or STREAM)[rec[4]], rec[4], tonumber(rec[3])
local fields = entry_fields(k_stream, rec[2])  -- nil: the entry was deleted under the holder
local payload = fields and fields['payload'] or ''
redis.call('XACK', k_stream, ARGV[12], rec[2])
redis.call('XDEL', k_stream, rec[2])
redis.call('ZREM', KEYS[2], id)
if rec[6] then fair_fns().tidy(k_stream) end
if ARGV[20] == '1' then redis.call(QUEUE_PUBLISH, ARGV[16], 'release') end
local max_retries = tonumber(ARGV[6])
local ok, decoded = pcall(cjson.decode, payload)
if ok and type(decoded) == 'table' and tonumber(decoded['max_retries']) then
  max_retries = tonumber(decoded['max_retries'])
end
local intervals = {}
if ok and type(decoded) == 'table' and type(decoded['retry_intervals']) == 'table' then
  for _, v in ipairs(decoded['retry_intervals']) do intervals[#intervals + 1] = tonumber(v) * 1000 end
else
  for v in string.gmatch(ARGV[18] or '', '[^,]+') do intervals[#intervals + 1] = tonumber(v) end
end
if ARGV[5] == '1' and attempts <= max_retries and not fields then
  -- a retry needs the payload, which lived only in the deleted entry (issue 11)
  local err = lose(KEYS[1], id, prio, rec[2], 'processing', {KEYS[6], KEYS[10], KEYS[3], KEYS[4]},
    ARGV[13], now, ARGV[11], attempts, ARGV[4])
  return {'failed', prio, 'lost', err}
end
if ARGV[5] == '1' and attempts <= max_retries then
  local raw = math.min(tonumber(ARGV[9]), tonumber(ARGV[7]) * tonumber(ARGV[8]) ^ (attempts - 1))
  if #intervals > 0 then raw = intervals[math.min(attempts, #intervals)] end
  local r = tonumber(ARGV[10])
  local delay = raw
  if r >= 0 then delay = raw / 2 + r * raw / 2 end
  local due = now + math.floor(delay)
  redis.call('HSET', KEYS[1], 'state', 'retrying', 'error', ARGV[4], 'payload', payload,
    'run_at', due)
  redis.call('HDEL', KEYS[1], 'entry')
  schedule(KEYS[5], ARGV[16], id, due)
  if rec[5] then schedule(KEYS[11], ARGV[16], id, tonumber(rec[5])) end
  redis.call('HINCRBY', KEYS[4], 'retrying:' .. prio, 1)
  redis.call('HINCRBY', KEYS[4], 'total:retried', 1)
  event(KEYS[3], ARGV[13], id, 'retrying', attempts)
  return {'retrying', prio, due}
end
bury(KEYS[1], KEYS[6], KEYS[10], KEYS[3], KEYS[4], ARGV[13], id, prio, payload, ARGV[4], ARGV[15],
  attempts, now, ARGV[11], ARGV[14], ARGV[17])
return {'failed', prio}
