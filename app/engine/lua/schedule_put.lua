-- Create or replace a cron schedule (engine/schedules.py): its definition, its next tick in
-- the due set (absent while paused), and a wake-up for every replica's scheduler.
-- KEYS: 1 definitions hash (name -> JSON), 2 due zset (name -> next tick, epoch s),
--       3 last hash (name -> last fired tick)
-- ARGV: 1 name, 2 definition (JSON), 3 'create' | 'replace', 4 next tick ('' = none ever),
--       5 'pause' | 'run' | 'keep' (replace: paused stays paused, running runs),
--       6 channel (told 'changed'), 7 most schedules a deployment may hold
-- Returns {'ok', next tick or '', last tick or ''} ; {'taken'} (create: the name exists) ;
-- {'missing'} (replace: no such schedule) ; {'full'} (create: at the limit).
local name = ARGV[1]
local exists = redis.call('HEXISTS', KEYS[1], name) == 1
if ARGV[3] == 'create' then
  if exists then return {'taken'} end
  if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[7]) then return {'full'} end
  redis.call('HDEL', KEYS[3], name)
elseif not exists then
  return {'missing'}
end
local paused = ARGV[5] == 'pause'
if ARGV[5] == 'keep' then paused = not redis.call('ZSCORE', KEYS[2], name) end
redis.call('HSET', KEYS[1], name, ARGV[2])
local next_tick = ''
if paused or ARGV[4] == '' then
  redis.call('ZREM', KEYS[2], name)
else
  redis.call('ZADD', KEYS[2], ARGV[4], name)
  next_tick = ARGV[4]
end
redis.call(QUEUE_PUBLISH, ARGV[6], 'changed')
return {'ok', next_tick, redis.call('HGET', KEYS[3], name) or ''}
