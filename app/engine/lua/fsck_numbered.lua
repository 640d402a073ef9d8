-- fsck (issue 11): check a batch of a numbered queue's index zset members (mode 'index')
-- or its aliases hash fields (mode 'rid') against the item records, atomically; with
-- repair, remove references to items that left the queue.
-- Classes (named after PAI-EAS, the numbered queues' first user; the names are output):
--   eas_index_orphan (an index member whose item is gone or finished: index reads count
--   it), eas_rid_orphan (an alias naming no item in the queue).
-- KEYS: 1 the index zset or the aliases hash
-- ARGV: 1 repair ('1'/'0'), 2 mode ('index' | 'rid'), 3 the queue's key prefix,
--       4… numbers or aliases
-- Also touched, derived from the prefix (same hash tag): the items' records.
-- Returns the findings (see _fsck.lua).
local prefix = ARGV[3]

local function why_not_live(id)
  local state = redis.call('HGET', prefix .. 'task:' .. id, 'state')
  if not state then return 'no record' end
  if TERMINAL[state] then return 'the item is ' .. state end
  return nil
end

local function check_index(id)
  if not redis.call('ZSCORE', KEYS[1], id) then return end
  local why = why_not_live(id)
  if not why then return end
  if REPAIR then redis.call('ZREM', KEYS[1], id) end
  report(id, 'eas_index_orphan', why, 'removed', 1)
end

local function check_rid(rid)
  local id = redis.call('HGET', KEYS[1], rid)
  if not id then return end
  local why = why_not_live(id)
  if not why and redis.call('HGET', prefix .. 'task:' .. id, 'rid') ~= rid then
    why = 'item ' .. id .. ' carries another requestId'
  end
  if not why then return end
  if REPAIR then redis.call('HDEL', KEYS[1], rid) end
  report(rid, 'eas_rid_orphan', 'names item ' .. id .. ': ' .. why, 'removed', 1)
end

local checker = ARGV[2] == 'index' and check_index or check_rid
for i = 4, #ARGV do checker(ARGV[i]) end
return findings
