-- Record a result: fenced; record update + XACK + XDEL + lease removal + event + PUBLISH.
-- KEYS: 1 task hash, 2 leases, 3 events, 4 counters, 5 stream:high, 6 stream:default,
--       7 stream:low, 8-10 tenant streams high/default/low (a tenant's task's entry),
--       11… the queue's effects (below)
-- ARGV: 1 eval_id, 2 entry, 3 attempt, 4 result JSON, 5 result ttl s, 6 group,
--       7 events maxlen, 8 answer for the task's reply queue ('' for none; see
--       answer_numbered in _lib.lua),
--       9 the queue assumed ('' = default), 10 the queue's wake channel when it has a
--       QUEUE_MAX_IN_FLIGHT ('' none): told 'release', a slot is free
-- then the queue's effects (engine/keys.py QueueKeys.effects: what finished() and the
-- numbered-queue helpers of _lib.lua touch: dependants released into the schedule, stats,
-- callbacks and relays, the expiring zset, index, aliases, the reply queue's keys). Also
-- touched: records of this queue (dependants of the task, read from its record).
-- Returns {'ok', priority} or {'missing' | 'state' | 'stale' | 'expired' | 'queue', state or
-- queue}
local id = ARGV[1]
local STREAM = {high = KEYS[5], default = KEYS[6], low = KEYS[7]}
local TENANTS = {high = KEYS[8], default = KEYS[9], low = KEYS[10]}
local misrouted = wrong_queue(KEYS[1], ARGV[9])
if misrouted then return misrouted end
local now = now_ms()
local refused, rec = fence(KEYS[1], KEYS[2], id, ARGV[2], ARGV[3], now)
if refused then return refused end
local k_stream = (rec[6] and TENANTS or STREAM)[rec[4]]
redis.call('XACK', k_stream, ARGV[6], rec[2])
redis.call('XDEL', k_stream, rec[2])
if rec[6] then fair_fns().tidy(k_stream) end
if (ARGV[10] or '') ~= '' then redis.call(QUEUE_PUBLISH, ARGV[10], 'release') end
redis.call('ZREM', KEYS[2], id)
redis.call('HSET', KEYS[1], 'state', 'completed', 'result', ARGV[4], 'finished', now)
redis.call('HDEL', KEYS[1], 'entry', 'error')
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('HINCRBY', KEYS[4], 'total:completed', 1)
answer_numbered(KEYS[1], id, ARGV[8], ARGV[7])
redis.call('PUBLISH', 'evaluation:completed',
  '{"eval_id":' .. cjson.encode(id) .. ',"result":' .. ARGV[4] .. '}')
event(KEYS[3], ARGV[7], id, 'completed', rec[3])
finished(KEYS[1], id, 'completed', now, ARGV[7], ARGV[5])
return {'ok', rec[4]}
