-- Cancel a task: queued (entry deleted, its sequence number recorded as a hole so
-- positions stay exact), scheduled / retrying (removed from the schedule), or processing
-- when terminate is set (entry acked and deleted, holders told on the cancel channel), or
-- deferred (it leaves its parents' `deps:` sets). Its own dependants are cancelled
-- through finished().
-- KEYS: 1 task hash, 2 stream:high, 3 stream:default, 4 stream:low, 5 holes:high,
--       6 holes:default, 7 holes:low, 8 scheduled, 9 leases, 10 events, 11 counters,
--       12 expiries (a waiting task with an expiry leaves it), 13-21 fair share
--       (keys.QueueKeys.fair): a tenant's queued task leaves its tenant stream and waiting
--       order (no hole: its position is counted there), 22… the queue's effects (below)
-- ARGV: 1 eval_id, 2 terminate ('1'/'0'), 3 group, 4 events maxlen, 5 result ttl s,
--       6 cancel channel, 7 the queue assumed ('' = default)
-- then the queue's effects (engine/keys.py QueueKeys.effects: what finished() and the
-- numbered-queue helpers of _lib.lua touch: dependants released into the schedule, stats,
-- callbacks and relays, the expiring zset, index, aliases, the reply queue's keys). Also
-- touched: records of this queue (dependants of the task, read from its record).
-- Returns {'cancelled', previous state, priority} | {'missing'} | {'state', state}
local id = ARGV[1]
local STREAM = {high = KEYS[2], default = KEYS[3], low = KEYS[4]}
local HOLES = {high = KEYS[5], default = KEYS[6], low = KEYS[7]}
local FAIR = fair_keys(KEYS, 13)
local misrouted = wrong_queue(KEYS[1], ARGV[7])
if misrouted then return misrouted end
local rec = redis.call('HMGET', KEYS[1], 'state', 'prio', 'entry', 'seq', 'attempts', 'exp',
  'tenant')
local state, prio, entry = rec[1], rec[2] or 'default', rec[3]  -- (absent while queued)
if not state then return {'missing'} end
local k_stream = rec[7] and FAIR.stream[prio] or STREAM[prio]
if state == 'queued' and rec[7] then
  redis.call('XACK', k_stream, ARGV[3], entry)  -- parked (_lib.lua, fair share)
  redis.call('XDEL', k_stream, entry)
  local F = fair_fns()
  F.tidy(k_stream)
  if redis.call('ZREM', FAIR.waiting[prio], F.member(rec[7], tonumber(rec[4]), id)) == 1 then
    redis.call('HINCRBY', KEYS[11], 'tq:' .. prio, -1)
  end
elseif state == 'queued' then
  redis.call('XDEL', STREAM[prio], entry)
  redis.call('ZADD', HOLES[prio], rec[4], id)
elseif state == 'scheduled' or state == 'retrying' then
  redis.call('ZREM', KEYS[8], id)
  redis.call('HINCRBY', KEYS[11], state .. ':' .. prio, -1)
elseif state == 'deferred' then
  redis.call('HINCRBY', KEYS[11], 'deferred:' .. prio, -1)
  redis.call('ZREM', string.sub(KEYS[11], 1, -9) .. 'deferred', id)  -- <queue>deferred
  redis.call('HDEL', KEYS[1], 'waiting')
  leave_parents(KEYS[1], id)
elseif state == 'processing' and ARGV[2] == '1' then
  redis.call('XACK', k_stream, ARGV[3], entry)
  redis.call('XDEL', k_stream, entry)
  if rec[7] then fair_fns().tidy(k_stream) end
  redis.call('ZREM', KEYS[9], id)
  redis.call(QUEUE_PUBLISH, ARGV[6], id)
else
  return {'state', state}
end
if rec[6] then redis.call('ZREM', KEYS[12], id) end
local now = now_ms()
if state == 'queued' then keep_created(KEYS[1], entry) end  -- its time was its entry's
redis.call('HSET', KEYS[1], 'state', 'cancelled', 'finished', now)
redis.call('HDEL', KEYS[1], 'payload', 'run_at', 'entry')
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('HINCRBY', KEYS[11], 'total:cancelled', 1)
answer_numbered(KEYS[1], id, nil, ARGV[4])
event(KEYS[10], ARGV[4], id, 'cancelled', rec[5] or '0')
finished(KEYS[1], id, 'cancelled', now, ARGV[4], ARGV[5])
return {'cancelled', state, prio}
