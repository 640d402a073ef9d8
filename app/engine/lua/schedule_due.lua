-- The schedules due now by the Redis clock, for a scheduler's turn (runtime/scheduler.py).
-- Nothing is claimed: every replica may read the same ones; each tick fires once because
-- its task's eval_id is `<name>:<tick>` (the enqueue refuses a known one) and the next
-- tick is set by compare-and-set (schedule_advance.lua).
-- KEYS: 1 due zset, 2 definitions hash
-- ARGV: 1 most schedules to answer
-- Returns {now ms, the earliest tick after now or -1, schedules, active (not paused),
--          {{name, tick, definition}...}}.
local t = redis.call('TIME')
local now_s = tonumber(t[1])
local now = now_s * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_s, 'WITHSCORES', 'LIMIT', 0,
  tonumber(ARGV[1]))
local out = {}
for i = 1, #due, 2 do
  local def = redis.call('HGET', KEYS[2], due[i])
  if def then
    out[#out + 1] = {due[i], due[i + 1], def}
  else
    redis.call('ZREM', KEYS[1], due[i])  -- a due entry outliving its definition
  end
end
local first = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now_s, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
local earliest = first[2] or '-1'
return {now, earliest, redis.call('HLEN', KEYS[2]), redis.call('ZCARD', KEYS[1]), out}
