-- fsck (issue 15): check a batch of dedup_keys of one queue's `dedup` hash against the
-- tasks they name, atomically; with repair, let go of keys that hold nothing.
-- Class: dedup_orphan (a dedup_key naming no task that holds it: the record is gone, the
--   task is finished or holds no key, and no throttle window of the key is open). Such a
--   key would not stop a new task (enqueue.lua checks the holder), but it is memory nobody
--   frees.
-- KEYS: 1 the dedup hash, 2 the dedup ttl zset (throttle windows)
-- ARGV: 1 repair ('1'/'0'), 2 task key prefix, 3… dedup_keys
-- Also touched, derived from the task key prefix (same hash tag): the holders' records
-- (read only).
-- Returns the findings (see _fsck.lua).
local now = now_ms()
for i = 3, #ARGV do
  local key = ARGV[i]
  local held = redis.call('HGET', KEYS[1], key)
  local window = redis.call('ZSCORE', KEYS[2], key)
  if held and not (window and tonumber(window) > now) then
    local rec = redis.call('HMGET', ARGV[2] .. held, 'state', 'dk')
    local why
    if not rec[1] then
      why = 'names ' .. held .. ', whose record is gone'
    elseif TERMINAL[rec[1]] then
      why = 'names ' .. held .. ', which is ' .. rec[1]
    elseif rec[2] ~= key then
      why = 'names ' .. held .. ', which does not hold it (a lapsed throttle window)'
    end
    if why then
      if REPAIR then
        redis.call('HDEL', KEYS[1], key)
        redis.call('ZREM', KEYS[2], key)
      end
      report(key, 'dedup_orphan', why, 'removed', 1)
    end
  end
end
return findings
