-- Admin: drop every live structure of a queue and recreate the empty streams and groups.
-- Finished task records are removed afterwards by engine/admin.py with SCAN + UNLINK.
-- KEYS: 1-3 streams high/default/low, 4 counters, 5 leases, 6 scheduled, 7 dlq,
--       8-10 holes high/default/low, 11 dlq index, 12 deferred, 13 pace, 14 expiries,
--       15 dedup, 16 dedup ttl, 17 expiring, 18-26 fair share (keys.QueueKeys.fair), 27 the
--       rate limit's state (every key given is deleted)
-- ARGV: 1 group, 2 task key prefix
-- Returns the number of live task records deleted.
local removed = 0
local function drop(id)
  removed = removed + redis.call('DEL', ARGV[2] .. id)
end
for _, i in ipairs({1, 2, 3, 18, 19, 20}) do  -- the priority and tenant streams
  for _, item in ipairs(redis.call('XRANGE', KEYS[i], '-', '+')) do
    drop(to_map(item[2])['id'])
  end
end
for _, id in ipairs(redis.call('ZRANGE', KEYS[6], 0, -1)) do drop(id) end
redis.call('DEL', unpack(KEYS))
for i = 1, 3 do redis.call('XGROUP', 'CREATE', KEYS[i], ARGV[1], '0', 'MKSTREAM') end
return removed
