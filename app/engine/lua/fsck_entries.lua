-- fsck (issue 11): check a batch of one priority stream's entries (mode 'entries', ids
-- from XRANGE) or of its group's pending entries (mode 'pending', ids from XPENDING)
-- against the task records, atomically; with repair, drop what no live task holds.
-- Classes: entry_orphan (an entry no queued or processing record of this queue names,
--   pending or not), pel_orphan (a pending entry whose stream entry is gone and that no
--   leased task of this queue names).
-- KEYS: 1 stream, 2 counters, 3 holes of that priority, 4 leases
-- ARGV: 1 repair ('1'/'0'), 2 group, 3 task key prefix, 4 priority, 5 the queue assumed
--       ('' = default), 6 mode ('entries' | 'pending'), 7 most leases to index (a pending
--       entry whose stream entry is gone is judged only when the leases zset is no larger),
--       8… entry ids
-- Also touched, derived from the task key prefix (same hash tag): the records the entries
-- name, and the records of leased tasks (mode 'pending').
-- Returns the findings (see _fsck.lua).
local group, prefix, mode = ARGV[2], ARGV[3], ARGV[6]

-- Why the record named by an entry does not hold it; nil when it does.
local function not_held(fields, entry)
  local tid = fields['id'] or ''
  local rec = redis.call('HMGET', prefix .. tid, 'state', 'entry', 'q')
  if not rec[1] then return 'entry of ' .. tid .. ': no record' end
  if (rec[3] or '') ~= ARGV[5] then return 'entry of ' .. tid .. ': a task of queue ' .. rec[3] end
  if rec[1] ~= 'queued' and rec[1] ~= 'processing' then return 'entry of ' .. tid .. ', which is ' .. rec[1] end
  if rec[2] ~= entry then
    return 'entry of ' .. tid .. ', whose record names entry ' .. (rec[2] or '(none)')
  end
  return nil
end

-- Whether the group handed out `entry` already (it is at or before its last delivered id).
local function delivered(entry)
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    local info = to_map(g)
    if info['name'] == group then return not id_before(info['last-delivered-id'], entry) end
  end
  return false
end

-- The sequence number of an orphan entry. Only entries of earlier versions carry it (`n`;
-- issue 14: it is the record's `seq`, and no record holds an orphan). Numbers grow with
-- entry ids, so an undelivered orphan's lies between those of the entries around it, above
-- head, and is the one number there that no hole accounts for. nil when it was delivered
-- (no hole is due) or that is ambiguous (another orphan or lost entry beside it): then
-- the counter check (fsck_counters) recomputes the holes.
local function orphan_seq(entry, fields, head)
  if fields['n'] then return tonumber(fields['n']) end
  if delivered(entry) then return nil end
  local prev = redis.call('XREVRANGE', KEYS[1], '(' .. entry, '-', 'COUNT', 1)[1]
  local nxt = redis.call('XRANGE', KEYS[1], '(' .. entry, '+', 'COUNT', 1)[1]
  local low = math.max(head, prev and entry_seq(prefix, prev[1], to_map(prev[2])) or head)
  local high = nxt and entry_seq(prefix, nxt[1], to_map(nxt[2])) or
    tonumber(redis.call('HGET', KEYS[2], 'seq:' .. ARGV[4]) or '0') + 1
  if high - low > 10000 then return nil end  -- (too wide to tell; the counter check may)
  local holed, found = {}, nil
  local holes = redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. low, '(' .. high, 'WITHSCORES')
  for i = 2, #holes, 2 do holed[tonumber(holes[i])] = true end
  for s = low + 1, high - 1 do
    if not holed[s] then
      if found then return nil end
      found = s
    end
  end
  return found
end

local function check_entry(entry)
  local fields = entry_fields(KEYS[1], entry)
  if not fields then return end
  local why = not_held(fields, entry)
  if not why then return end
  if REPAIR then
    redis.call('XACK', KEYS[1], group, entry)
    -- never delivered: its sequence number counts as queued until a hole says otherwise
    local head = tonumber(redis.call('HGET', KEYS[2], 'head:' .. ARGV[4]) or '0')
    local n = orphan_seq(entry, fields, head)
    if n and n > head then redis.call('ZADD', KEYS[3], n, entry) end
    redis.call('XDEL', KEYS[1], entry)
  end
  report(entry, 'entry_orphan', why, 'deleted', 1)
end

-- Entries named by the leased (processing) tasks of this queue, built on first need;
-- false when there are too many leases to read in one step.
local held
local function leased_entries()
  if held ~= nil then return held end
  held = false
  if redis.call('ZCARD', KEYS[4]) > tonumber(ARGV[7]) then return held end
  held = {}
  for _, id in ipairs(redis.call('ZRANGE', KEYS[4], 0, -1)) do
    local entry = redis.call('HGET', prefix .. id, 'entry')
    if entry then held[entry] = true end
  end
  return held
end

-- A pending entry still in the stream is judged by check_entry; here, those whose stream
-- entry is gone (Redis keeps them pending until they are acknowledged or claimed).
local function check_pending(entry)
  if not is_pending(KEYS[1], group, entry) or entry_fields(KEYS[1], entry) then return end
  local leased = leased_entries()
  if not leased or leased[entry] then return end
  if REPAIR then redis.call('XACK', KEYS[1], group, entry) end
  report(entry, 'pel_orphan', 'its stream entry is gone and no leased task names it',
    'acknowledged', 1)
end

local checker = mode == 'pending' and check_pending or check_entry
for i = 8, #ARGV do checker(ARGV[i]) end
return findings
