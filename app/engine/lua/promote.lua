-- Move due scheduled/retrying tasks into their priority streams (they become `queued`).
-- Safe with many processes: each task is moved once (state check + ZREM in one step).
-- Issue 15: also the housekeeping of expiries and dedup windows. A waiting task whose
-- expiry came (`expiries`) becomes `expired` (expire in _lib.lua); a lapsed throttle window
-- (`dedup:ttl`) lets go of its dedup_key, unless an active or debounce task holds the key now.
-- KEYS: 1 scheduled, 2 counters, 3 events, 4 stream:high, 5 stream:default, 6 stream:low,
--       7 holes:high, 8 holes:default, 9 holes:low, 10 expiries, 11 dedup, 12 dedup ttl,
--       13-21 fair share (keys.QueueKeys.fair: where a tenant's task waits), 22… the
--       queue's effects (engine/keys.py QueueKeys.effects: what finished() touches)
-- ARGV: 1 task key prefix, 2 limit, 3 events maxlen, 4 result ttl s (of expired tasks)
-- Also touched: the tasks' records (records of this queue).
-- Returns {moved, ms until the next due task or expiry or -1, {{eval_id, prio}...} expired,
--          1 when a batch was full (more may be due now) else 0}
local STREAM = {high = KEYS[4], default = KEYS[5], low = KEYS[6]}
local HOLES = {high = KEYS[7], default = KEYS[8], low = KEYS[9]}
local FAIR = fair_keys(KEYS, 13)
local Q = {stream = STREAM, holes = HOLES, scheduled = KEYS[1], counters = KEYS[2],
  events = KEYS[3], expiries = KEYS[10], fair = FAIR}
local now = now_ms()
local moved, expired, full = 0, {}, 0

-- The first LIMIT members due in a zset; a full batch says more may be due.
local function due(key)
  local found = redis.call('ZRANGEBYSCORE', key, '-inf', now, 'LIMIT', 0, ARGV[2])
  if #found >= tonumber(ARGV[2]) then full = 1 end
  return found
end

for _, id in ipairs(due(KEYS[1])) do
  local k_task = ARGV[1] .. id
  local rec = redis.call('HMGET', k_task, 'state', 'prio', 'payload', 'exp', 'tenant')
  rec[2] = rec[2] or 'default'  -- (absent while queued: push in _lib.lua)
  if rec[1] == 'scheduled' or rec[1] == 'retrying' then
    push(k_task, STREAM[rec[2]], KEYS[2], id, rec[2], rec[3], rec[4], FAIR, rec[5])
    redis.call('HINCRBY', KEYS[2], rec[1] .. ':' .. rec[2], -1)
    redis.call('HDEL', k_task, 'payload', 'run_at')
    event(KEYS[3], ARGV[3], id, 'queued')
    moved = moved + 1
  end
  redis.call('ZREM', KEYS[1], id)
end

-- A member that is not waiting (it started, or finished) just leaves the zset.
for _, id in ipairs(due(KEYS[10])) do
  local k_task = ARGV[1] .. id
  local rec = redis.call('HMGET', k_task, 'state', 'prio', 'entry', 'seq', 'attempts', 'tenant')
  rec[2] = rec[2] or 'default'  -- (absent while queued: push in _lib.lua)
  if WAITING[rec[1]] then
    expire(k_task, id, rec, Q, now, ARGV[3], ARGV[4])
    expired[#expired + 1] = {id, rec[2]}
  end
  redis.call('ZREM', KEYS[10], id)
end

for _, key in ipairs(due(KEYS[12])) do
  local held = redis.call('HGET', KEYS[11], key)
  if held and not redis.call('HGET', ARGV[1] .. held, 'dk') then
    redis.call('HDEL', KEYS[11], key)
  end
  redis.call('ZREM', KEYS[12], key)
end

local wait = -1
for _, key in ipairs({KEYS[1], KEYS[10]}) do
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if first[2] then
    local left = math.max(0, tonumber(first[2]) - now)
    if wait < 0 or left < wait then wait = left end
  end
end
return {moved, wait, expired, full}
