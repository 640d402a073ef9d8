-- Move due scheduled/retrying tasks into their priority streams (they become `queued`).
-- Safe with many processes: each task is moved once (state check + ZREM in one step).
-- KEYS: 1 scheduled, 2 counters, 3 events, 4 stream:high, 5 stream:default, 6 stream:low
-- ARGV: 1 task key prefix, 2 limit, 3 events maxlen
-- Returns {moved, ms until the next due task or -1}
local STREAM = {high = KEYS[4], default = KEYS[5], low = KEYS[6]}
local now = now_ms()
local moved = 0
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, ARGV[2])) do
  local k_task = ARGV[1] .. id
  local rec = redis.call('HMGET', k_task, 'state', 'prio', 'payload')
  if rec[1] == 'scheduled' or rec[1] == 'retrying' then
    push(k_task, STREAM[rec[2]], KEYS[2], id, rec[2], rec[3])
    redis.call('HINCRBY', KEYS[2], rec[1] .. ':' .. rec[2], -1)
    redis.call('HDEL', k_task, 'payload', 'run_at')
    event(KEYS[3], ARGV[3], id, 'queued')
    moved = moved + 1
  end
  redis.call('ZREM', KEYS[1], id)
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if not first[2] then return {moved, -1} end
return {moved, math.max(0, tonumber(first[2]) - now)}
