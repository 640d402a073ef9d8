-- fsck (issue 11): check a batch of a queue's DLQ index fields (mode 'index', eval_ids from
-- HSCAN) or dead letters (mode 'stream', entry ids from XRANGE) against each other,
-- atomically; with repair, make the index name exactly the dead letters.
-- Classes: dlq_index_orphan (an index field naming no dead letter of that task),
--   dlq_unindexed (a dead letter the index does not name: re-drive and delete by eval_id
--   cannot find it).
-- KEYS: 1 dlq, 2 dlq index
-- ARGV: 1 repair ('1'/'0'), 2 mode ('index' | 'stream'), 3… eval_ids or entry ids
-- Returns the findings (see _fsck.lua).
local function check_index(id)
  local dead = redis.call('HGET', KEYS[2], id)
  if not dead then return end
  local fields = entry_fields(KEYS[1], dead)
  if fields and fields['id'] == id then return end
  local why = 'names dead letter ' .. dead .. ', which is gone'
  if fields then why = 'names dead letter ' .. dead .. ', which is of ' .. (fields['id'] or '?') end
  if REPAIR then redis.call('HDEL', KEYS[2], id) end
  report(id, 'dlq_index_orphan', why, 'removed', 1)
end

local function check_letter(entry)
  local fields = entry_fields(KEYS[1], entry)
  if not fields then return end
  local id = fields['id'] or ''
  local indexed = redis.call('HGET', KEYS[2], id)
  if indexed == entry then return end
  local other = indexed and entry_fields(KEYS[1], indexed)
  if other and other['id'] == id then
    -- two dead letters of one task (bury keeps one): the newer one stays
    local older, newer = entry, indexed
    if id_before(indexed, entry) then older, newer = indexed, entry end
    if REPAIR then
      redis.call('HSET', KEYS[2], id, newer)
      redis.call('XDEL', KEYS[1], older)
    end
    return report(entry, 'dlq_unindexed', 'a second dead letter of ' .. id,
      'kept the newer one (' .. newer .. '), deleted ' .. older, 1)
  end
  if REPAIR then redis.call('HSET', KEYS[2], id, entry) end
  report(entry, 'dlq_unindexed', 'dead letter of ' .. id .. ' missing from the index', 'indexed', 1)
end

local checker = ARGV[2] == 'index' and check_index or check_letter
for i = 3, #ARGV do checker(ARGV[i]) end
return findings
