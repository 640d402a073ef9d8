-- One page of `GET /tasks?state=S` (engine/listing.py): read-only, a bounded range of the
-- state's own structure, never a scan of all tasks. Each candidate costs one HGETALL of its
-- record (plus O(log n) for a queued task's position); at most ARGV[5] candidates are
-- looked at per call, matching or not, so a filtered page may come back short with a cursor
-- to continue from.
-- Modes (ARGV[1]) and their KEYS:
--   queued      1-3 stream:high/default/low, 4 counters, 5-7 holes:high/default/low, 8-16
--               fair share (keys.QueueKeys.fair): per priority, high then default then
--               low, the entries after the group's last delivered id (tenant `default`, in
--               position order; cursor {priority index, entry id}), then the tenants'
--               waiting tasks (fair share), by tenant, FIFO within (cursor {priority index
--               + 3, waiting member}); each with its position (under fair share, the
--               expected start order: _fair.lua)
--   processing  1-3 streams, 4-6 tenant streams: the group's pending entries (XPENDING),
--               by stream then entry id (the tenants' entries still parked with `~waiting`
--               are skipped, at most 10 × the budget per call); cursor {stream index, entry
--               id}
--   zset        1 a zset of task ids (the schedule: due time; `deferred`: creation time),
--               ascending; cursor {score, member}
--   events      1 the events stream, newest first: the tasks whose last event is the
--               state; cursor {entry id}
--   dlq         1 the DLQ stream, newest first; cursor {entry id}
-- ARGV: 1 mode, 2 state, 3 task key prefix, 4 limit, 5 budget (candidates per call),
--       6 tenant ('' = any), 7 q ('' = any: an eval_id prefix or a metadata value),
--       8 group, 9 and 10 the cursor ('' = from the start), 11 TENANT_WEIGHTS (queued)
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

-- `q` first: it needs no Redis call where the payload is at hand (stream entries, dead
-- letters), so a filtered scan reads the records of the matches only.
local function q_ok(id, payload)
  return q == '' or string.sub(id, 1, #q) == q or metadata_has(payload)
end

local function tenant_ok(rec)
  return tenant == '' or (rec['tenant'] or 'default') == tenant
end

local function full() return #items >= limit or scanned >= budget end

-- How many candidates to read next: what the page still needs (`ratio` times that when
-- only some of them can match), never past the budget, and at most 100 at a time (Lua's
-- garbage collector makes a script that holds a large reply and then makes hundreds of
-- calls several times slower than the same work in slices: measured 13 ms → 8 ms for 500
-- records).
local function chunk(ratio)
  if q ~= '' or tenant ~= '' then ratio = 8 end
  return math.min(budget - scanned, (limit - #items) * ratio + 1, 100)
end

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

local function position(prio_index, head, seq, ahead)
  return ahead + seq - head - redis.call('ZCOUNT', KEYS[4 + prio_index], '(' .. head, '(' .. seq)
end

-- Fair share (the tenants' waiting tasks, _lib.lua and _fair.lua).
local F = fair_lib()
local FAIR, WEIGHTS = fair_keys(KEYS, 8), F.weights(ARGV[11])

-- Tenant `default`'s queued tasks at priority i: its stream's undelivered entries.
local function stream_part(i, after, ahead)
  local from = delivered(KEYS[i])
  if after ~= '' then from = later(from, after) end
  local c = redis.call('HMGET', KEYS[4], 'head:' .. PRIOS[i], 'tq:' .. PRIOS[i])
  local head, fair = tonumber(c[1] or '0'), tonumber(c[2] or '0') > 0
  local level = fair and F.level(FAIR, KEYS[4], KEYS[4 + i], PRIOS[i])
  while true do
    local n = chunk(1)
    local got = redis.call('XRANGE', KEYS[i], '(' .. from, '+', 'COUNT', n)
    for _, e in ipairs(got) do
      scanned, from = scanned + 1, e[1]
      local fields = to_map(e[2])
      if q_ok(fields['id'], fields['payload']) then
        local flat, rec = record(fields['id'])
        if rec['state'] == 'queued' and rec['entry'] == e[1] and tenant_ok(rec) then
          local seq = tonumber(rec['seq'])
          local pos = level and ahead + F.place(level, 'default', seq, WEIGHTS) or
            position(i, head, seq, ahead)
          items[#items + 1] = {fields['id'], flat, pos, fields['payload'] or ''}
        end
      end
      if full() then return {i, e[1]} end
    end
    if #got < n then return nil end
  end
end

-- The other tenants' queued tasks at priority i: their waiting order (by tenant, FIFO).
local function tenants_part(i, after, ahead)
  local p = PRIOS[i]
  local level = F.level(FAIR, KEYS[4], KEYS[4 + i], p)
  local from = tenant ~= '' and ('[' .. tenant .. '|') or '-'
  local to = tenant ~= '' and ('(' .. tenant .. '}') or '+'
  if after ~= '' then from = '(' .. after end
  while true do
    local n = chunk(1)
    local got = redis.call('ZRANGEBYLEX', FAIR.waiting[p], from, to, 'LIMIT', 0, n)
    for _, member in ipairs(got) do
      scanned, from = scanned + 1, '(' .. member
      local t, seq, id = string.match(member, '^([^|]*)|(%d+)|(.+)$')
      local flat, rec = record(id or '')
      if rec['state'] == 'queued' and rec['tenant'] == t and rec['entry'] then
        local fields = entry_fields(FAIR.stream[p], rec['entry']) or {}
        if q_ok(id, fields['payload']) then
          local pos = ahead + F.place(level, t, tonumber(seq), WEIGHTS)
          items[#items + 1] = {id, flat, pos, fields['payload'] or ''}
        end
      end
      if full() then return {i + 3, member} end
    end
    if #got < n then return nil end
  end
end

local function queued_page(first, after)
  local from_prio = first > 3 and first - 3 or first
  local ahead = 0
  for i = 1, from_prio - 1 do ahead = ahead + queued_in(KEYS[4], KEYS[4 + i], PRIOS[i]) end
  for i = from_prio, 3 do
    local done
    if first <= 3 or i > from_prio then
      local skip = tenant ~= '' and tenant ~= 'default'  -- its tasks are not in the stream
      done = not skip and stream_part(i, i == first and after or '', ahead)
      if done then return done end
    end
    if tenant ~= 'default' then
      done = tenants_part(i, (first > 3 and i == from_prio) and after or '', ahead)
      if done then return done end
    end
    ahead = ahead + queued_in(KEYS[4], KEYS[4 + i], PRIOS[i])
  end
  return nil
end

-- One pending entry of stream i: listed when its task is processing with it.
local function pending_one(i, p)
  local entry = redis.call('XRANGE', KEYS[i], p[1], p[1])
  local fields = entry[1] and to_map(entry[1][2]) or {}
  if not (fields['id'] and q_ok(fields['id'], fields['payload'])) then return end
  local flat, rec = record(fields['id'])
  if rec['state'] == 'processing' and rec['entry'] == p[1] and tenant_ok(rec) then
    items[#items + 1] = {fields['id'], flat, p[2], fields['payload'] or ''}
  end
end

local function processing_page(first, after)
  local parked = 0  -- tenants' waiting entries skipped (they are not processing)
  for i = first, #KEYS do
    local from = (i == first and after ~= '') and ('(' .. after) or '-'
    while true do
      local n = chunk(1)
      local got = redis.pcall('XPENDING', KEYS[i], group, from, '+', n)
      if type(got) ~= 'table' or got.err then break end
      for _, p in ipairs(got) do
        from = '(' .. p[1]
        if p[2] == PARKED then
          parked = parked + 1
          if parked >= 10 * budget then return {i, p[1]} end
        else
          scanned = scanned + 1
          pending_one(i, p)
          if full() then return {i, p[1]} end
        end
      end
      if #got < n then break end
    end
  end
  return nil
end

-- Members after (score, member): by rank while the member is still there, else from its
-- score on, skipping the members of that score up to it (they were listed).
local function zset_read(score, member, n)
  local rank = member ~= '' and redis.call('ZRANK', KEYS[1], member)
  if rank then return redis.call('ZRANGE', KEYS[1], rank + 1, rank + n, 'WITHSCORES') end
  if member == '' then return redis.call('ZRANGE', KEYS[1], 0, n - 1, 'WITHSCORES') end
  return redis.call('ZRANGEBYSCORE', KEYS[1], score, '+inf', 'WITHSCORES', 'LIMIT', 0, n), true
end

local function zset_page(score, member)
  while true do
    local n = chunk(2)
    local got, by_score = zset_read(score, member, n)
    local skip_score, skip_member = by_score and score, member  -- listed before: ties up to it
    for i = 1, #got, 2 do
      local id, at = got[i], got[i + 1]
      scanned = scanned + 1
      if not (at == skip_score and id <= skip_member) then
        local flat, rec = record(id)
        if rec['state'] == state and tenant_ok(rec) and q_ok(id, rec['payload']) then
          items[#items + 1] = {id, flat, at, ''}
        end
      end
      score, member = at, id
      if full() then return {at, id} end
    end
    if #got < 2 * n then return nil end
  end
end

-- Entries of a stream, newest first, after `after` ('' = from the newest), in chunks.
local function backwards(after, ratio, each)
  local from = after ~= '' and ('(' .. after) or '+'
  while true do
    local n = chunk(ratio)
    local got = redis.call('XREVRANGE', KEYS[1], from, '-', 'COUNT', n)
    for _, e in ipairs(got) do
      scanned, from = scanned + 1, '(' .. e[1]
      each(e)
      if full() then return {e[1]} end
    end
    if #got < n then return nil end
  end
end

local function events_page(after)
  local seen = {}
  -- a task leaves three events or more (queued, processing, its end): read 4 per task
  return backwards(after, 4, function(e)
    local fields = to_map(e[2])
    local id = fields['id']
    if fields['state'] ~= state or seen[id] or not q_ok(id, nil) then return end
    seen[id] = true
    local flat, rec = record(id)
    local at = tonumber(string.match(e[1], '^%d+'))
    -- the task's own last state change: an older event of the same eval_id (a run
    -- before a DLQ retry, a task before its id was reused) is older than `finished`
    if rec['state'] == state and tonumber(rec['finished'] or '0') <= at and tenant_ok(rec) then
      items[#items + 1] = {id, flat, at, ''}
    end
  end)
end

local function dlq_page(after)
  return backwards(after, 1, function(e)
    local dead = to_map(e[2])
    if not q_ok(dead['id'], dead['payload']) then return end
    local flat, rec = record(dead['id'])
    -- a record of another task under this eval_id (reused once this one's record expired)
    -- is not shown: only the dead letter is
    if rec['dlq'] ~= e[1] then flat, rec = {}, {} end
    if tenant_ok(rec) then items[#items + 1] = {dead['id'], flat, e[2], dead['payload'] or ''} end
  end)
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
