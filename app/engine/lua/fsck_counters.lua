-- fsck (issue 11): the per-state counters of one queue against its structures, in one
-- atomic step; with repair, recompute them. Bounded: a check that would read more than
-- LIMIT items is skipped and named in the reply.
--   queued:<prio>      seq - head - holes above head (what positions and /status use) must
--                      equal the entries not yet delivered. Delivered entries still in the
--                      stream are the tasks in flight, a prefix of it (sequence numbers
--                      grow with entry ids), so this reads only that prefix. Repair: raise
--                      head past entries lost from the front (XTRIM, MAXLEN), then, when
--                      seq - head <= LIMIT, recompute the holes from the numbers present.
--   scheduled:<prio>, retrying:<prio>  must equal the schedule's members whose record is in
--                      that state (when the schedule has at most LIMIT members). Repair: set.
--   tq:<prio>          tasks of tenants waiting at the priority (fair share) must equal the
--                      members of its waiting order (KEYS 9-11). Repair: set.
-- Class: counter_drift. (`deferred:<prio>` is not audited: no structure lists deferred
-- tasks, and a count taken over a live SCAN is not exact.)
-- KEYS: 1-3 stream:high/default/low, 4 counters, 5-7 holes:high/default/low, 8 scheduled,
--       9-11 the fair-share waiting orders high/default/low
-- ARGV: 1 repair ('1'/'0'), 2 task key prefix, 3 the queue assumed ('' = default), 4 LIMIT
-- Also touched, derived from the task key prefix (same hash tag): the scheduled tasks'
-- records and the records the stream entries name (read only).
-- Returns {findings (see _fsck.lua), {names of the checks skipped as too large}}
local LIMIT = tonumber(ARGV[4])
local skipped = {}

local function counter(name)
  return tonumber(redis.call('HGET', KEYS[4], name) or '0')
end

local function holes_above(k_holes, head)
  return redis.call('ZCOUNT', k_holes, '(' .. head, '+inf')
end

-- Delivered entries still in the stream (n <= head), and the first undelivered one's n;
-- nil when more than LIMIT are delivered (then the check is skipped). An entry's n is its
-- record's `seq` (entry_seq); an orphan (no record holds it) counts as delivered: it is no
-- queued task (fsck_entries drops it).
local function delivered_prefix(k_stream, head)
  local delivered, start = 0, '-'
  while delivered <= LIMIT do
    local batch = redis.call('XRANGE', k_stream, start, '+', 'COUNT', 100)
    for _, item in ipairs(batch) do
      local n = entry_seq(ARGV[2], item[1], to_map(item[2])) or 0
      if n > head then return delivered, n end
      delivered = delivered + 1
    end
    if #batch < 100 then return delivered, nil end
    start = '(' .. batch[#batch][1]
  end
  return nil
end

-- Holes recomputed from the sequence numbers still present above head.
local function recompute_holes(k_stream, k_holes, head, seq)
  local present, start = {}, '-'
  repeat
    local batch = redis.call('XRANGE', k_stream, start, '+', 'COUNT', 500)
    for _, item in ipairs(batch) do
      local n = entry_seq(ARGV[2], item[1], to_map(item[2])) or 0
      if n > head then present[n] = true end
    end
    if #batch > 0 then start = '(' .. batch[#batch][1] end
  until #batch < 500
  redis.call('ZREMRANGEBYSCORE', k_holes, '(' .. head, '+inf')
  for s = head + 1, seq do
    if not present[s] then redis.call('ZADD', k_holes, s, 'fsck:' .. s) end
  end
end

local function repair_queued(i, prio, head, seq, first, actual)
  local k_stream, k_holes = KEYS[i], KEYS[4 + i]
  local raised = first and first - 1 or seq
  if raised > head then
    redis.call('HSET', KEYS[4], 'head:' .. prio, raised)
    redis.call('ZREMRANGEBYSCORE', k_holes, '-inf', raised)
    head = raised
  end
  if seq - head - holes_above(k_holes, head) == actual then return true end
  if seq - head > LIMIT then return false end
  recompute_holes(k_stream, k_holes, head, seq)
  return seq - head - holes_above(k_holes, head) == actual
end

local function check_queued(i, prio)
  local seq, head = counter('seq:' .. prio), counter('head:' .. prio)
  local expected = seq - head - holes_above(KEYS[4 + i], head)
  local delivered, first = delivered_prefix(KEYS[i], head)
  if not delivered then
    skipped[#skipped + 1] = 'queued:' .. prio
    return
  end
  local actual = redis.call('XLEN', KEYS[i]) - delivered
  if expected == actual then return end
  local fixed = REPAIR and repair_queued(i, prio, head, seq, first, actual)
  report('queued:' .. prio, 'counter_drift', 'the counters say ' .. expected ..
    ' queued, the stream holds ' .. actual, fixed and 'recomputed' or
    'not recomputed: more than ' .. LIMIT .. ' sequence numbers to check', fixed and 1 or 0)
end

local function check_schedule()
  if redis.call('ZCARD', KEYS[8]) > LIMIT then
    skipped[#skipped + 1] = 'scheduled'
    return
  end
  local tally = {}
  for _, id in ipairs(redis.call('ZRANGE', KEYS[8], 0, -1)) do
    local rec = redis.call('HMGET', ARGV[2] .. id, 'state', 'prio', 'q')
    if (rec[1] == 'scheduled' or rec[1] == 'retrying') and (rec[3] or '') == ARGV[3] then
      local name = rec[1] .. ':' .. (rec[2] or 'default')
      tally[name] = (tally[name] or 0) + 1
    end
  end
  for _, state in ipairs({'scheduled', 'retrying'}) do
    for _, prio in ipairs(PRIOS) do
      local name = state .. ':' .. prio
      local said, held = counter(name), tally[name] or 0
      if said ~= held then
        if REPAIR then redis.call('HSET', KEYS[4], name, held) end
        report(name, 'counter_drift', 'the counter says ' .. said .. ', the schedule holds ' ..
          held, 'set to ' .. held, 1)
      end
    end
  end
end

local function check_tenants()
  for i, prio in ipairs(PRIOS) do
    local said, held = counter('tq:' .. prio), redis.call('ZCARD', KEYS[8 + i])
    if said ~= held then
      if REPAIR then redis.call('HSET', KEYS[4], 'tq:' .. prio, held) end
      report('tq:' .. prio, 'counter_drift', 'the counter says ' .. said ..
        ' tenant tasks wait, the waiting order holds ' .. held, 'set to ' .. held, 1)
    end
  end
end

for i, prio in ipairs(PRIOS) do check_queued(i, prio) end
check_schedule()
check_tenants()
return {findings, skipped}
