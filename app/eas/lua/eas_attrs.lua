-- What `_attrs_=true` reports of one PAI-EAS queue, in one step.
-- KEYS: 1 index zset, 2 counters, 3 stream:high, 4 stream:default, 5 stream:low
-- ARGV: 1 group
-- Returns {items in the index, first index ('' when empty), last index given ('' for
--          none), entries delivered and not acknowledged}
local first = redis.call('ZRANGE', KEYS[1], 0, 0)
local pending = 0
for i = 3, 5 do
  local summary = redis.pcall('XPENDING', KEYS[i], ARGV[1])
  if type(summary) == 'table' and not summary.err then pending = pending + summary[1] end
end
return {redis.call('ZCARD', KEYS[1]), first[1] or '', redis.call('HGET', KEYS[2], 'index') or '',
  pending}
