-- Enqueue one task atomically: duplicate check + record + stream entry (or schedule) + event.
-- KEYS: 1 task hash, 2 stream of its priority, 3 counters, 4 scheduled zset, 5 events,
--       6 holes:high, 7 holes:default, 8 holes:low
-- ARGV: 1 eval_id, 2 priority, 3 payload (JSON), 4 run_at ms (0 = now), 5 events maxlen,
--       6 schedule channel (told about new due times, so promoters can sleep until then),
--       7 (optional) the callback mark `cb`: the task's callback_url, or '' when only
--       STORAGE_SERVICE_URL applies; absent = no callback, no field (app/lua/_lib.lua)
-- Returns {state, position} ; {'duplicate'} when the eval_id is known.
local id, prio, payload, run_at, maxlen = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
if redis.call('EXISTS', KEYS[1]) == 1 then return {'duplicate'} end
local now = now_ms()
redis.call('HSET', KEYS[1], 'created', now, 'attempts', 0)
if ARGV[7] then redis.call('HSET', KEYS[1], 'cb', ARGV[7]) end
redis.call('HINCRBY', KEYS[3], 'total:enqueued', 1)
if run_at > now then
  redis.call('HSET', KEYS[1], 'state', 'scheduled', 'prio', prio, 'payload', payload,
    'run_at', run_at)
  local first = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
  redis.call('ZADD', KEYS[4], run_at, id)
  redis.call('HINCRBY', KEYS[3], 'scheduled:' .. prio, 1)
  event(KEYS[5], maxlen, id, 'scheduled')
  if not first[2] or run_at < tonumber(first[2]) then redis.call('PUBLISH', ARGV[6], run_at) end
  return {'scheduled', 0}
end
local seq = push(KEYS[1], KEYS[2], KEYS[3], id, prio, payload)
event(KEYS[5], maxlen, id, 'queued')
local position = 0
for i, p in ipairs(PRIOS) do
  if p == prio then
    local head = tonumber(redis.call('HGET', KEYS[3], 'head:' .. p) or '0')
    position = position + seq - head - redis.call('ZCOUNT', KEYS[5 + i], '(' .. head, '+inf')
    break
  end
  position = position + queued_in(KEYS[3], KEYS[5 + i], p)
end
return {'queued', position}
