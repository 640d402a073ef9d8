-- Pause, resume or delete a schedule (engine/schedules.py), and wake every replica's
-- scheduler. A schedule is paused exactly when it has no entry in the due set.
-- KEYS: 1 definitions hash, 2 due zset, 3 last hash
-- ARGV: 1 name, 2 'pause' | 'resume' | 'delete', 3 resume: its next tick ('' = none ever),
--       4 channel (told 'changed')
-- Returns {'ok', definition, next tick or '', last tick or ''} (delete: as it was) ;
-- {'missing'} when there is no such schedule.
local name, action = ARGV[1], ARGV[2]
local def = redis.call('HGET', KEYS[1], name)
if not def then return {'missing'} end
local last = redis.call('HGET', KEYS[3], name) or ''
if action == 'delete' then
  redis.call('HDEL', KEYS[1], name)
  redis.call('HDEL', KEYS[3], name)
  redis.call('ZREM', KEYS[2], name)
elseif action == 'pause' then
  redis.call('ZREM', KEYS[2], name)
elseif not redis.call('ZSCORE', KEYS[2], name) and ARGV[3] ~= '' then
  -- resume: ticks missed while paused are not fired; a running schedule keeps its tick
  redis.call('ZADD', KEYS[2], ARGV[3], name)
end
redis.call(QUEUE_PUBLISH, ARGV[4], 'changed')
local next_tick = ''
if action ~= 'delete' then next_tick = redis.call('ZSCORE', KEYS[2], name) or '' end
return {'ok', def, next_tick, last}
