-- Delete or commit PAI-EAS items by index, or truncate: delete every item below an index.
-- KEYS: 1 index zset, 2 counters, 3 events, 4-6 stream:high/default/low, then what
--       eas_drop (_eas.lua) touches (holes ×3, scheduled, counters, leases, events,
--       aliases, stats), then (delete, commit) the items' task hashes
-- ARGV: 1 key prefix, 2 mode ('delete' | 'commit' | 'truncate'), 3 events maxlen,
--       4 group, 5 result ttl s, 6 truncate: items below this index; 7 truncate: at most
--       this many per call; then (delete, commit) the indexes
-- Returns {items that left the queue, indexes looked at} (a truncate loops while full).
local prefix, mode = ARGV[1], ARGV[2]
local ids = {}
if mode == 'truncate' then
  ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[6], 'LIMIT', 0, ARGV[7])
else
  for i = 8, #ARGV do ids[#ids + 1] = ARGV[i] end
end
local now, removed = now_ms(), 0
for _, id in ipairs(ids) do
  removed = removed + eas_drop(prefix, id, mode == 'commit', now, ARGV[3], ARGV[5], ARGV[4])
end
return {removed, #ids}
