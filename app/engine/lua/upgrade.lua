-- Upgrade from the layout where named queues shared the default queue's hash tag
-- (engine/upgrade.py): one step of moving a deployment's keys, in one of four modes. Run
-- on one server only (old and new keys are of different hash tags; a Redis Cluster never
-- held the old layout). Each mode is idempotent: what was moved is not found again.
--
-- 'queue': KEYS 1…n the named queue's old structure keys, n+1…2n the new ones (same
--   order). Each old key that exists is renamed to its new name, unless that exists too
--   (then it is left, and named in the reply). Returns {moved, {conflicting old keys}}.
-- 'records': KEYS 1 the queue's new expiring zset, then pairs (old record, new record);
--   ARGV 2 the queue's name, 3… the eval_ids. A record of that queue (it has a state) is
--   renamed to its new key (its TTL kept; one with a TTL enters the expiring zset), and its
--   old key becomes the id directory's pointer to it. Returns the number moved.
-- 'deps': KEYS 1 an old `deps:<parent>` set, 2 the parent's record, 3… its members'
--   records; ARGV 2 the parent's eval_id, 3 the parent's queue, 4… per member, its eval_id
--   and its queue. The members become marks on the parent (`d:` of its queue, `x:` with a
--   `w:` mark and an `xdeps` entry on a member of another queue; "Dependencies" in
--   _lib.lua), `kids` counts them, the set is deleted. Returns the number of marks.
-- 'callbacks': KEYS 1 the old callbacks stream, 2… the named queues' new streams; ARGV
--   2 the group, then per entry its id and the index (in KEYS) of its queue's stream.
--   Each entry is appended to its queue's stream and removed from the old one. Returns the
--   number moved.
local mode = ARGV[1]

if mode == 'queue' then
  local n, moved, conflicts = #KEYS / 2, 0, {}
  for i = 1, n do
    if redis.call('EXISTS', KEYS[i]) == 1 then
      if redis.call('EXISTS', KEYS[n + i]) == 1 then
        conflicts[#conflicts + 1] = KEYS[i]
      else
        redis.call('RENAME', KEYS[i], KEYS[n + i])
        moved = moved + 1
      end
    end
  end
  return {moved, conflicts}
end

if mode == 'records' then
  local now, moved = now_ms(), 0
  for i = 3, #ARGV do
    local old, new = KEYS[2 * (i - 2)], KEYS[2 * (i - 2) + 1]
    local rec = redis.call('HMGET', old, 'state', 'q')
    if rec[1] and rec[2] == ARGV[2] and redis.call('EXISTS', new) == 0 then
      local ttl = redis.call('PTTL', old)
      redis.call('RENAME', old, new)
      redis.call('HSET', old, 'q', ARGV[2], 'at', now)
      if ttl > 0 then redis.call('ZADD', KEYS[1], now + ttl, ARGV[i]) end
      moved = moved + 1
    end
  end
  return moved
end

if mode == 'deps' then
  local parent, pqueue, marks = ARGV[2], ARGV[3], 0
  if redis.call('HEXISTS', KEYS[2], 'state') == 1 then
    for i = 3, #KEYS do
      local cid, cqueue = ARGV[2 + 2 * (i - 2)], ARGV[3 + 2 * (i - 2)]
      if redis.call('SISMEMBER', KEYS[1], cid) == 1 and redis.call('EXISTS', KEYS[i]) == 1 then
        if cqueue == pqueue then
          redis.call('HSET', KEYS[2], 'd:' .. cid, '')
        else
          redis.call('HSET', KEYS[2], 'x:' .. cid, cqueue)
          if redis.call('HGET', KEYS[i], 'state') == 'deferred' then
            redis.call('HSET', KEYS[i], 'w:' .. parent, 1)
            local others = cjson.decode(redis.call('HGET', KEYS[i], 'xdeps') or '[]')
            others[#others + 1] = parent
            redis.call('HSET', KEYS[i], 'xdeps', cjson.encode(others))
          end
        end
        marks = marks + 1
      end
    end
    if marks > 0 then redis.call('HSET', KEYS[2], 'kids', marks) else redis.call('HDEL', KEYS[2], 'kids') end
  end
  redis.call('DEL', KEYS[1])
  return marks
end

if mode == 'callbacks' then
  local moved = 0
  for i = 3, #ARGV, 2 do
    local found = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])
    if #found > 0 then
      redis.call('XADD', KEYS[tonumber(ARGV[i + 1])], '*', unpack(found[1][2]))
      redis.pcall('XACK', KEYS[1], ARGV[2], ARGV[i])
      redis.call('XDEL', KEYS[1], ARGV[i])
      moved = moved + 1
    end
  end
  return moved
end
error('upgrade.lua: unknown mode ' .. tostring(mode))
