-- Re-drive a dead letter: the task is `queued` again at its priority with a fresh attempt
-- count, and its DLQ entry is removed. Its callback mark (`cb`) is kept.
-- KEYS: 1 task hash, 2 dlq, 3 dlq index, 4 counters, 5 events, 6 stream:high,
--       7 stream:default, 8 stream:low, 9 stats, 10-18 fair share (keys.QueueKeys.fair:
--       where a tenant's task waits; its tenant travels in the dead letter)
-- ARGV: 1 eval_id, 2 events maxlen, 3 named queue ('' = default)
-- Returns {'queued', priority} | {'missing'} | {'state', state} (a live task reuses that eval_id) |
-- {'lost'} (its payload was lost with its stream entry: nothing to run)
local id = ARGV[1]
local STREAM = {high = KEYS[6], default = KEYS[7], low = KEYS[8]}
local FAIR = fair_keys(KEYS, 10)
local dlq_id = redis.call('HGET', KEYS[3], id)
if not dlq_id then return {'missing'} end
local found = redis.call('XRANGE', KEYS[2], dlq_id, dlq_id)
if #found == 0 then
  redis.call('HDEL', KEYS[3], id)
  return {'missing'}
end
local state = redis.call('HGET', KEYS[1], 'state')
if state and state ~= 'failed' then return {'state', state} end
local dead = to_map(found[1][2])
-- a task dead-lettered because its stream entry was lost has no payload to run (issue 11)
if (dead['payload'] or '') == '' then return {'lost'} end
local cb = dead['cb'] or redis.call('HGET', KEYS[1], 'cb')
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'created', now_ms())  -- attempts: none yet (reads as 0)
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'q', ARGV[3]) end
if cb then redis.call('HSET', KEYS[1], 'cb', cb) end
if dead['tenant'] then redis.call('HSET', KEYS[1], 'tenant', dead['tenant']) end
push(KEYS[1], STREAM[dead['prio']], KEYS[4], id, dead['prio'], dead['payload'], nil, FAIR,
  dead['tenant'])
redis.call('XDEL', KEYS[2], dlq_id)
redis.call('HDEL', KEYS[3], id)
redis.call('HINCRBY', KEYS[4], 'total:redriven', 1)
event(KEYS[5], ARGV[2], id, 'queued')
return {'queued', dead['prio']}
