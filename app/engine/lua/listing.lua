-- One page of `GET /tasks?state=S` (engine/listing.py): read-only, a bounded range of the
-- state's own structure, never a scan of all tasks. Each candidate costs one HGETALL of its
-- record (plus O(log n) for a queued task's position); at most ARGV[5] candidates are
-- looked at per call, matching or not, so a filtered page may come back short with a cursor
-- to continue from.
-- Modes (ARGV[1]) and their KEYS:
--   queued      1-3 stream:high/default/low, 4 counters, 5-7 holes:high/default/low:
--               the entries after the group's last delivered id, high then default then
--               low (position order); cursor {priority index, entry id}
--   processing  1-3 streams: the group's pending entries (XPENDING), by priority then
--               entry id; cursor {priority index, entry id}
--   zset        1 a zset of task ids (the schedule: due time; `deferred`: creation time),
--               ascending; cursor {score, member}
--   events      1 the events stream, newest first: the tasks whose last event is the
--               state; cursor {entry id}
--   dlq         1 the DLQ stream, newest first; cursor {entry id}
-- ARGV: 1 mode, 2 state, 3 task key prefix, 4 limit, 5 budget (candidates per call),
--       6 tenant ('' = any), 7 q ('' = any: an eval_id prefix or a metadata value),
--       8 group, 9 and 10 the cursor ('' = from the start)
-- Also read, derived from ARGV[3] (same hash tag): the candidates' records.
-- Returns {items, cursor part 1 ('' = no more), cursor part 2, Redis time ms}; an item is
-- {eval_id, flat HGETALL of its record, extra, payload ('' unknown)}: extra is the
-- position (queued), the holder (processing), the score (zset), the event time (events),
-- the flat dead letter (dlq).
local mode, state, prefix = ARGV[1], ARGV[2], ARGV[3]
local limit, budget = tonumber(ARGV[4]), tonumber(ARGV[5])
local tenant, q, group = ARGV[6], ARGV[7], ARGV[8]
local items, scanned = {}, 0
-- orjson writes a string's characters as they are but for these: a q holding one is
-- looked for in the decoded metadata only
local PLAIN = not string.find(q, '[%c"\\]')

local function metadata_has(payload)
  if payload == nil or payload == '' then return false end
  if PLAIN and not string.find(payload, q, 1, true) then return false end
  local ok, doc = pcall(cjson.decode, payload)
  if not ok or type(doc) ~= 'table' or type(doc['metadata']) ~= 'table' then return false end
  for _, v in pairs(doc['metadata']) do
    local kind = type(v)
    if (kind == 'string' and v == q) or
      ((kind == 'number' or kind == 'boolean') and tostring(v) == q) then
      return true
    end
  end
  return false
end

local function wanted(id, rec, payload)
  if tenant ~= '' and (rec['tenant'] or 'default') ~= tenant then return false end
  if q == '' or string.sub(id, 1, #q) == q then return true end
  return metadata_has(payload)
end

local function full() return #items >= limit or scanned >= budget end

local function record(id)
  local flat = redis.call('HGETALL', prefix .. id)
  return flat, to_map(flat)
end

-- The group's last delivered id of a stream ('0-0': none; a missing stream or group too).
local function delivered(k_stream)
  local groups = redis.pcall('XINFO', 'GROUPS', k_stream)
  if type(groups) ~= 'table' or groups.err then return '0-0' end
  for _, g in ipairs(groups) do
    local info = to_map(g)
    if info['name'] == group then return info['last-delivered-id'] end
  end
  return '0-0'
end

local function later(a, b)  -- the later of two entry ids
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  if tonumber(am) ~= tonumber(bm) then return tonumber(am) > tonumber(bm) and a or b end
  return tonumber(as) >= tonumber(bs) and a or b
end

local function position(prio_index, seq, ahead)
  local p = PRIOS[prio_index]
  local head = tonumber(redis.call('HGET', KEYS[4], 'head:' .. p) or '0')
  return ahead + seq - head - redis.call('ZCOUNT', KEYS[4 + prio_index], '(' .. head, '(' .. seq)
end

local function queued_page(first, after)
  local ahead = 0
  for i = 1, first - 1 do ahead = ahead + queued_in(KEYS[4], KEYS[4 + i], PRIOS[i]) end
  for i = first, 3 do
    local from = delivered(KEYS[i])
    if i == first and after ~= '' then from = later(from, after) end
    while true do
      local n = budget - scanned
      local got = redis.call('XRANGE', KEYS[i], '(' .. from, '+', 'COUNT', n)
      for _, e in ipairs(got) do
        scanned, from = scanned + 1, e[1]
        local fields = to_map(e[2])
        local flat, rec = record(fields['id'])
        if rec['state'] == 'queued' and rec['entry'] == e[1] and
          wanted(fields['id'], rec, fields['payload']) then
          local pos = position(i, tonumber(rec['seq']), ahead)
          items[#items + 1] = {fields['id'], flat, pos, fields['payload'] or ''}
        end
        if full() then return {i, e[1]} end
      end
      if #got < n then break end
    end
    ahead = ahead + queued_in(KEYS[4], KEYS[4 + i], PRIOS[i])
  end
  return nil
end

local function processing_page(first, after)
  for i = first, 3 do
    local from = (i == first and after ~= '') and ('(' .. after) or '-'
    while true do
      local n = budget - scanned
      local got = redis.pcall('XPENDING', KEYS[i], group, from, '+', n)
      if type(got) ~= 'table' or got.err then break end
      for _, p in ipairs(got) do
        scanned, from = scanned + 1, '(' .. p[1]
        local entry = redis.call('XRANGE', KEYS[i], p[1], p[1])
        local fields = entry[1] and to_map(entry[1][2]) or {}
        if fields['id'] then
          local flat, rec = record(fields['id'])
          if rec['state'] == 'processing' and rec['entry'] == p[1] and
            wanted(fields['id'], rec, fields['payload']) then
            items[#items + 1] = {fields['id'], flat, p[2], fields['payload'] or ''}
          end
        end
        if full() then return {i, p[1]} end
      end
      if #got < n then break end
    end
  end
  return nil
end

-- Members after (score, member): by rank while the member is still there, else from its
-- score on, skipping the members of that score up to it (they were listed).
local function zset_page(score, member)
  local got, skip = nil, nil
  local rank = member ~= '' and redis.call('ZRANK', KEYS[1], member)
  if rank then
    got = redis.call('ZRANGE', KEYS[1], rank + 1, rank + budget, 'WITHSCORES')
  elseif member ~= '' then
    got = redis.call('ZRANGEBYSCORE', KEYS[1], score, '+inf', 'WITHSCORES', 'LIMIT', 0, budget)
    skip = tonumber(score)
  else
    got = redis.call('ZRANGE', KEYS[1], 0, budget - 1, 'WITHSCORES')
  end
  for i = 1, #got, 2 do
    local id, at = got[i], got[i + 1]
    scanned = scanned + 1
    if not (skip and tonumber(at) == skip and id <= member) then
      local flat, rec = record(id)
      if rec['state'] == state and wanted(id, rec, rec['payload']) then
        items[#items + 1] = {id, flat, at, ''}
      end
    end
    if full() then return {at, id} end
  end
  return nil
end

local function events_page(after)
  local seen = {}
  local got = redis.call('XREVRANGE', KEYS[1], after ~= '' and ('(' .. after) or '+', '-',
    'COUNT', budget)
  for _, e in ipairs(got) do
    scanned = scanned + 1
    local fields = to_map(e[2])
    local id = fields['id']
    if fields['state'] == state and not seen[id] then
      seen[id] = true
      local flat, rec = record(id)
      local at = tonumber(string.match(e[1], '^%d+'))
      -- the task's own last state change: an older event of the same eval_id (a run
      -- before a DLQ retry, a task before its id was reused) is older than `finished`
      if rec['state'] == state and tonumber(rec['finished'] or '0') <= at and
        wanted(id, rec, nil) then
        items[#items + 1] = {id, flat, at, ''}
      end
    end
    if full() then return {e[1]} end
  end
  return nil
end

local function dlq_page(after)
  local got = redis.call('XREVRANGE', KEYS[1], after ~= '' and ('(' .. after) or '+', '-',
    'COUNT', budget)
  for _, e in ipairs(got) do
    scanned = scanned + 1
    local dead = to_map(e[2])
    local flat, rec = record(dead['id'])
    -- a record of another task under this eval_id (reused once this one's record expired)
    -- is not shown: only the dead letter is
    if rec['dlq'] ~= e[1] then flat, rec = {}, {} end
    if wanted(dead['id'], rec, dead['payload']) then
      items[#items + 1] = {dead['id'], flat, e[2], dead['payload'] or ''}
    end
    if full() then return {e[1]} end
  end
  return nil
end

local cursor
if mode == 'queued' then
  cursor = queued_page(tonumber(ARGV[9] ~= '' and ARGV[9] or '1'), ARGV[10])
elseif mode == 'processing' then
  cursor = processing_page(tonumber(ARGV[9] ~= '' and ARGV[9] or '1'), ARGV[10])
elseif mode == 'zset' then
  cursor = zset_page(ARGV[9], ARGV[10])
elseif mode == 'events' then
  cursor = events_page(ARGV[9])
else
  cursor = dlq_page(ARGV[9])
end
cursor = cursor or {'', ''}
return {items, tostring(cursor[1]), cursor[2] or '', now_ms()}
