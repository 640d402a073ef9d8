-- Remove dead letters: all of them, those that failed before a cut-off, or one eval_id.
-- Bounded per call (LIMIT); the caller repeats while the reply equals the limit.
-- KEYS: 1 dlq, 2 dlq index
-- ARGV: 1 mode ('all' | 'before' | 'one'), 2 cut-off ms (before) or eval_id (one), 3 limit
-- Returns the number of entries removed.
local mode, arg, limit = ARGV[1], ARGV[2], tonumber(ARGV[3])
if mode == 'one' then
  local dlq_id = redis.call('HGET', KEYS[2], arg)
  if not dlq_id then return 0 end
  redis.call('HDEL', KEYS[2], arg)
  return redis.call('XDEL', KEYS[1], dlq_id)
end
local last = '+'
if mode == 'before' then last = '(' .. arg .. '-0' end
local removed = 0
for _, item in ipairs(redis.call('XRANGE', KEYS[1], '-', last, 'COUNT', limit)) do
  local fields = to_map(item[2])
  if redis.call('HGET', KEYS[2], fields['id']) == item[1] then
    redis.call('HDEL', KEYS[2], fields['id'])
  end
  redis.call('XDEL', KEYS[1], item[1])
  removed = removed + 1
end
return removed
