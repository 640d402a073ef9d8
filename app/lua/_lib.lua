-- Helpers prepended by streams.py to every script below (each script keeps one SHA).
-- Time is always Redis server time, in milliseconds: leases and schedules never
-- depend on the clocks of the service processes.
local PRIOS = {'high', 'default', 'low'}

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function to_map(flat)
  local map = {}
  for i = 1, #flat, 2 do map[flat[i]] = flat[i + 1] end
  return map
end

local function event(k_events, maxlen, id, state, attempt)
  redis.call('XADD', k_events, 'MAXLEN', '~', maxlen, '*',
    'id', id, 'state', state, 'attempt', attempt or '')
end

-- Queued entries of one priority level: enqueued (seq) minus delivered (head)
-- minus cancelled while queued (holes above head). O(log n).
local function queued_in(k_counters, k_holes, prio)
  local seq = tonumber(redis.call('HGET', k_counters, 'seq:' .. prio) or '0')
  local head = tonumber(redis.call('HGET', k_counters, 'head:' .. prio) or '0')
  return seq - head - redis.call('ZCOUNT', k_holes, '(' .. head, '+inf')
end

-- The payload of a live stream entry (XRANGE on one id is O(log n)).
local function entry_payload(k_stream, entry)
  local found = redis.call('XRANGE', k_stream, entry, entry)
  if #found == 0 then return '' end
  return to_map(found[1][2])['payload'] or ''
end

-- Put a task into the dead-letter queue: terminal `failed`, record kept FAILURE_TTL.
-- The DLQ index (eval_id -> DLQ entry id) makes retry and delete by eval_id O(1).
local function bury(k_task, k_dlq, k_dlq_index, k_events, k_counters, maxlen, id, prio, payload,
                    err, detail, attempts, now, ttl, result_json)
  local old = redis.call('HGET', k_dlq_index, id)
  if old then redis.call('XDEL', k_dlq, old) end
  local dlq_id = redis.call('XADD', k_dlq, '*', 'id', id, 'prio', prio, 'error', err,
    'detail', detail, 'attempts', attempts, 'failed_at', now, 'payload', payload)
  redis.call('HSET', k_dlq_index, id, dlq_id)
  redis.call('HSET', k_task, 'state', 'failed', 'error', err, 'finished', now, 'dlq', dlq_id)
  redis.call('HDEL', k_task, 'payload', 'run_at', 'entry')
  redis.call('EXPIRE', k_task, ttl)
  redis.call('HINCRBY', k_counters, 'total:failed', 1)
  redis.call('PUBLISH', 'evaluation:failed',
    '{"eval_id":' .. cjson.encode(id) .. ',"result":' .. result_json .. '}')
  event(k_events, maxlen, id, 'failed', attempts)
end

-- Append a task to its priority stream: it becomes `queued` with the next sequence number.
local function push(k_task, k_stream, k_counters, id, prio, payload)
  local seq = redis.call('HINCRBY', k_counters, 'seq:' .. prio, 1)
  local entry = redis.call('XADD', k_stream, '*', 'id', id, 'n', seq, 'payload', payload)
  redis.call('HSET', k_task, 'state', 'queued', 'prio', prio, 'seq', seq, 'entry', entry)
  return seq
end
