-- Compare-and-set a schedule's next tick after its tick's task was enqueued (or found
-- already there): only when the due set still holds the tick this replica fired from and
-- the definition is still the one it read. Else another replica advanced it first, or the
-- schedule was paused, changed or deleted meanwhile: nothing is written.
-- KEYS: 1 definitions hash, 2 due zset, 3 last hash
-- ARGV: 1 name, 2 the tick read (epoch s), 3 the definition read, 4 next tick ('' = none
--       ever: the schedule leaves the due set), 5 the tick fired
-- Returns 1 when advanced, 0 when not.
local name = ARGV[1]
local score = redis.call('ZSCORE', KEYS[2], name)
if not score or tonumber(score) ~= tonumber(ARGV[2]) then return 0 end
if redis.call('HGET', KEYS[1], name) ~= ARGV[3] then return 0 end
if ARGV[4] == '' then
  redis.call('ZREM', KEYS[2], name)
else
  redis.call('ZADD', KEYS[2], ARGV[4], name)
end
redis.call('HSET', KEYS[3], name, ARGV[5])
return 1
