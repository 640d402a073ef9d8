-- Record the results of many tasks of one queue in one call (issue 14): each task is fenced
-- and settled exactly as complete.lua settles it (record, XACK + XDEL, lease, event,
-- PUBLISH, finished()), and answered on its own; what is shared is paid once per call: the
-- script call and TIME, one HMGET per task for everything the fence, the queue check and
-- finished() look at, one ZMSCORE for the leases, XACK / XDEL / ZREM with every id, and one
-- HINCRBY of the totals and of the per-minute stats.
-- A tenant's task (fair share) is settled here too: its entry is acked and deleted in its
-- priority's tenant stream, which is deleted once empty (fair_tidy, as complete.lua does);
-- a completion changes no virtual time or waiting order (those move at enqueue and claim).
-- Under QUEUE_MAX_IN_FLIGHT the freed slots are announced with one 'release' per call, not
-- one per task: the message carries no count, its one listener (runtime/consumers.py
-- `_listen`) only sets an event that wakes a held claim, and that claim, running after this
-- script, counts the free slots itself (ZCARD of the leases, claim.lua); so N messages in a
-- row wake each subscribed process as one does, and the messages are at-most-once anyway
-- (a held consumer looks again after MAX_IDLE).
-- KEYS: 1 leases, 2 events, 3 counters, 4 stream:high, 5 stream:default, 6 stream:low,
--       7-9 tenant streams high/default/low (fair share: a tenant's task's entry),
--       10… the n task hashes (as the tasks in ARGV), then the queue's effects
--       (engine/keys.py QueueKeys.effects, as complete.lua)
-- ARGV: 1 result ttl s, 2 group, 3 events maxlen, 4 the queue assumed ('' = default),
--       5 the queue's wake channel when it has a QUEUE_MAX_IN_FLIGHT ('' none): told
--       'release' once when any task was settled, 6 n, then per task: eval_id, entry,
--       attempt, result JSON, answer for the task's reply queue ('' for none)
-- Also touched: records of this queue (dependants of the tasks, read from their records).
-- Returns one reply per task, in order, as complete.lua's: {'ok', priority} or
-- {'missing' | 'state' | 'stale' | 'expired' | 'queue', state or queue}
local ttl, group, maxlen, assumed, channel = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local n = tonumber(ARGV[6])
local FIRST, TASKS = 7, 9  -- ARGV of the first task; KEYS[TASKS + i] is task i's record
local STREAM = {high = KEYS[4], default = KEYS[5], low = KEYS[6]}
local TENANTS = {high = KEYS[7], default = KEYS[8], low = KEYS[9]}
local FIELDS = {'state', 'entry', 'attempts', 'prio', 'q', 'cb', 'kids', 'dk', 'ix', 'error',
  'tenant'}
local now = now_ms()
local now_s = tostring(now)  -- formatted once, not per task

local ids = {}
for i = 1, n do ids[i] = ARGV[FIRST + (i - 1) * 5] end
local deadlines = redis.call('ZMSCORE', KEYS[1], unpack(ids))

-- The queue check of wrong_queue (_lib.lua) and the fence of _fence.lua on one read: nil
-- when the caller holds the task, else the refusal.
local function refused(rec, entry, attempt, deadline)
  local q = rec[5] or ''
  if q ~= assumed and (q ~= '' or rec[1]) then return {'queue', q} end
  return holder_refusal(rec, entry, attempt) or lease_refusal(rec, deadline, now)
end

-- The entries to ack per stream: a priority stream's, or (a tenant's task) its tenant
-- stream's.
local acked = {}
local function ack_later(rec)
  local k_stream = (rec[11] and TENANTS or STREAM)[rec[4]]
  local gone = acked[k_stream]
  if not gone then
    gone = {}
    acked[k_stream] = gone
  end
  gone[#gone + 1] = rec[2]
end

local out, done, recs, taken = {}, {}, {}, {}
local minutes = {}  -- epoch minute -> {an events entry of it, count}
-- First every fence (reads only), then the acks: XACK / XDEL / ZREM are the first writes, and
-- they are not refused out of memory, so (as in complete.lua, whose first write is XACK) a
-- batch still settles when Redis is out of memory (`noeviction` refuses only a script's
-- first write that may grow memory: settling existing work drains the backlog).
for i = 1, n do
  local a = FIRST + (i - 1) * 5
  local rec = redis.call('HMGET', KEYS[TASKS + i], unpack(FIELDS))
  rec[4] = rec[4] or 'default'  -- (absent while queued: push in _lib.lua)
  local refusal = refused(rec, ARGV[a + 1], ARGV[a + 2], deadlines[i])
  if not refusal and taken[ARGV[a]] then refusal = {'state', 'completed'} end  -- twice here
  if refusal then
    out[i] = refusal
  else
    taken[ARGV[a]] = true
    recs[i] = rec
    ack_later(rec)
    done[#done + 1] = ARGV[a]
  end
end
-- In a fixed order (the priority streams, then the tenant streams), so a call's commands
-- do not depend on table iteration.
for k = 4, 9 do
  local gone = acked[KEYS[k]]
  if gone then
    redis.call('XACK', KEYS[k], group, unpack(gone))
    redis.call('XDEL', KEYS[k], unpack(gone))
    if k > 6 then fair_fns().tidy(KEYS[k]) end
  end
end
if #done > 0 then
  redis.call('ZREM', KEYS[1], unpack(done))
  if channel ~= '' then redis.call(QUEUE_PUBLISH, channel, 'release') end
end
for i = 1, n do
  local rec = recs[i]
  if rec then
    local a = FIRST + (i - 1) * 5
    local id, k_task = ARGV[a], KEYS[TASKS + i]
    redis.call('HSET', k_task, 'state', 'completed', 'result', ARGV[a + 3], 'finished', now_s)
    if rec[10] then
      redis.call('HDEL', k_task, 'entry', 'error')
    else
      redis.call('HDEL', k_task, 'entry')
    end
    redis.call('EXPIRE', k_task, ttl)
    if rec[9] then answer_numbered(k_task, id, ARGV[a + 4], maxlen) end
    redis.call('PUBLISH', 'evaluation:completed',
      '{"eval_id":' .. cjson.encode(id) .. ',"result":' .. ARGV[a + 3] .. '}')
    local entry = redis.call('XADD', KEYS[2], 'MAXLEN', '~', maxlen, '*',
      'id', id, 'state', 'completed', 'attempt', rec[3])
    local minute = math.floor(tonumber(string.match(entry, '^%d+')) / 60000)
    minutes[minute] = minutes[minute] or {entry, 0}
    minutes[minute][2] = minutes[minute][2] + 1
    if rec[6] or rec[7] or rec[8] or (rec[5] and rec[5] ~= '') then
      finished(k_task, id, 'completed', now, maxlen, ttl)
    end
    out[i] = {'ok', rec[4]}
  end
end
if #done > 0 then redis.call('HINCRBY', KEYS[3], 'total:completed', #done) end
for _, counted in pairs(minutes) do count_minute(KEYS[2], counted[1], 'completed', counted[2]) end
return out
