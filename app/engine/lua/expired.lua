-- The housekeeping of a named queue's `expiring` zset (finished ids scored by the time
-- their record expires, see finished() in _lib.lua): members due by now leave it; those
-- whose record is gone are answered, so their pointers in the id directory can be dropped
-- (unpoint.lua, on the home tag). A record still there (re-driven from the DLQ, or claimed
-- again by a new task) keeps its pointer; it re-enters the zset when it finishes again.
-- KEYS: 1 the expiring zset
-- ARGV: 1 the task key prefix, 2 most members per call
-- Returns {{eval_id, expiry ms}...} of records that are gone.
local now = now_ms()
local gone = {}
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, ARGV[2])
for i = 1, #due, 2 do
  if redis.call('EXISTS', ARGV[1] .. due[i]) == 0 then gone[#gone + 1] = {due[i], due[i + 1]} end
  redis.call('ZREM', KEYS[1], due[i])
end
return gone
