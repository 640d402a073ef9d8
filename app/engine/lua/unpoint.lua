-- Drop pointers of the id directory (engine/keys.py) that no longer point at a live task:
-- a claim whose enqueue was refused, a pointer found stale (its task's record is gone), or
-- the pointers of expired records (the housekeeping, admin.py). A pointer is dropped only
-- when it still names queue ARGV[1], is at least ARGV[2] ms old (a stale-looking pointer
-- younger than that may belong to an enqueue still under way), and was stamped as the
-- caller saw it: exactly at ARGV[2 + i] (a refused claim, a stale pointer), or before it
-- (`<n`: an expired record, so an id claimed again since then keeps its new pointer). A
-- default queue's record (it has a state) is never touched.
-- KEYS: the pointers
-- ARGV: 1 the queue, 2 the least age ms, 3… per pointer, its stamp ('<n>' exactly, '<<n>'
--       before n)
-- Returns the number of pointers dropped.
local now = now_ms()
local dropped = 0
for i, k in ipairs(KEYS) do
  local rec = redis.call('HMGET', k, 'state', 'q', 'at')
  local stamp, want = tonumber(rec[3] or '0'), ARGV[2 + i]
  local match = stamp == tonumber(want)
  if string.sub(want, 1, 1) == '<' then match = stamp < tonumber(string.sub(want, 2)) end
  if not rec[1] and rec[2] == ARGV[1] and match and now - stamp >= tonumber(ARGV[2]) then
    dropped = dropped + redis.call('DEL', k)
  end
end
return dropped
