-- Hand out up to COUNT tasks to one consumer, in strict priority order, in one step:
--   1. promote scheduled/retrying tasks that are due into their priority stream (one whose
--      expiry came first becomes `expired` instead);
--   2. take over tasks whose lease lapsed (their holder died), XCLAIM to this consumer;
--      past LEASE_MAX_LAPSES such a task is failed into the DLQ (poison guard); one whose
--      stream entry was deleted is dead-lettered as lost, one whose entry is no longer
--      pending is queued again (see reclaim);
--   3. XREADGROUP '>' on high, then default, then low, only as much as is still free; an
--      entry whose expiry (`x`, issue 15) has come is settled `expired`, not handed out;
--      at a level where tenants' tasks wait, the free slots are shared by weighted fair
--      queuing (_fair.lua): tenant `default` reads its priority stream, the others' tasks
--      are XCLAIMed from the tenant stream (take_tenant);
--   RATE_LIMITS and QUEUE_MAX_IN_FLIGHT (ARGV 13-15) bound how many are handed out, and the
--   reply says when a limit held tasks back (then `wake` is when to look again).
-- Each delivery bumps `attempts`: (entry, attempts) is the fencing token of the holder.
-- A missing group (Redis restarted empty, DELETE /tasks) is recreated here.
-- KEYS: 1 stream:high, 2 stream:default, 3 stream:low, 4 counters, 5 leases, 6 events,
--       7 scheduled, 8 dlq, 9 holes:high, 10 holes:default, 11 holes:low, 12 dlq index,
--       13 paused flag (set: hand out nothing; due tasks are still promoted), 14 expiries,
--       15 the rate limit's GCRA state, 16-24 fair share (keys.QueueKeys.fair: tenant
--       streams, waiting orders, virtual times, each high, default, low), 25… the queue's
--       effects (below)
-- ARGV: 1 group, 2 consumer, 3 count, 4 lease ms, 5 max lapses, 6 events maxlen,
--       7 task key prefix, 8 failure ttl s, 9 promote limit, 10 the priorities this
--       consumer takes, comma-separated ('' = all; CONSUME): others are neither read nor
--       taken over when their lease lapses, 11 result ttl s (of expired tasks),
--       12 TENANT_WEIGHTS ('name=w,…'), 13 RATE_LIMITS' emission interval in ms ('' = no
--       rate limit), 14 its burst, 15 QUEUE_MAX_IN_FLIGHT ('' = none), 16 '1': a partition
--       of a partitioned queue (engine/partitions.py): also answer the hint below
-- then the queue's effects (engine/keys.py QueueKeys.effects: what finished() and the
-- numbered-queue helpers of _lib.lua touch: dependants released into the schedule, stats,
-- callbacks and relays, the expiring zset, index, aliases, the reply queue's keys). Also
-- touched: records of this queue (dependants of the task, read from its record).
-- Returns {{{eval_id, entry, attempt, prio, payload, waited ms}...}, ms until the next due
--          task or lease expiry (-1: none), groups recreated (0/1), {tail id of each stream}
--          when idle, {{eval_id, reason}...} of tasks dead-lettered because their stream
--          entry was lost (see reclaim), {{eval_id, prio}...} of tasks expired here, limit
--          that held tasks back ('' none, 'rate', 'in_flight')}. `waited ms`: since the task
--          entered its priority stream (queue wait). The tails are of the priority streams,
--          then, while tenants' tasks exist, of the tenant streams. For a partition (ARGV
--          16), an 8th element: the best priority this consumer takes that still has queued
--          tasks (its own or tenants') after this claim ('' none).
local group, consumer, count = ARGV[1], ARGV[2], tonumber(ARGV[3])
local lease_ms, max_lapses, maxlen = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local prefix, failure_ttl = ARGV[7], ARGV[8]
local STREAM = {high = KEYS[1], default = KEYS[2], low = KEYS[3]}
local HOLES = {high = KEYS[9], default = KEYS[10], low = KEYS[11]}
local FAIR = fair_keys(KEYS, 16)
local now = now_ms()
local out, recreated = {}, 0
local TAKES = {}
for p in string.gmatch(ARGV[10] or '', '[^,]+') do TAKES[p] = true end
local everything = next(TAKES) == nil
if everything then TAKES = {high = true, default = true, low = true} end

local expired = {}  -- {eval_id, prio} of tasks expired here (issue 15)
local Q = {stream = STREAM, holes = HOLES, scheduled = KEYS[7], counters = KEYS[4],
  events = KEYS[6], expiries = KEYS[14], fair = FAIR}

local function expire_here(k_task, id, rec, group)
  expire(k_task, id, rec, Q, now, maxlen, ARGV[11], group)
  expired[#expired + 1] = {id, rec[2]}
end

-- `exp`: the task's expiry, when it has one: started now, it leaves `expiries`. `attempts`:
-- the record's count so far (read with the entry). The leases are written in one ZADD once
-- every task is delivered (`leased`).
-- Numbers go to Redis as strings made once (each Lua number passed to redis.call is
-- formatted with printf again).
-- `created`: the record's; a task queued at its creation has none while it waits (its
-- entry's id holds the time, issue 14), so its first delivery writes it, and `prio` (a
-- waiting record of priority `default` has none: see push in _lib.lua).
local leased, now_s, until_s = {}, tostring(now), tostring(now + lease_ms)
local function deliver(k_task, id, entry, prio, payload, exp, attempts, created)
  if exp then redis.call('ZREM', KEYS[14], id) end
  local attempt = tonumber(attempts or '0') + 1
  local attempt_s = tostring(attempt)
  if created then
    redis.call('HSET', k_task, 'attempts', attempt_s, 'state', 'processing', 'started', now_s,
      'worker', consumer, 'prio', prio)
  else
    redis.call('HSET', k_task, 'attempts', attempt_s, 'state', 'processing', 'started', now_s,
      'worker', consumer, 'prio', prio, 'created', created_of(entry))
  end
  leased[#leased + 1], leased[#leased + 2] = until_s, id
  event(KEYS[6], maxlen, id, 'processing', attempt_s)
  -- an entry id's first part is the Redis time of its XADD: the wait needs no extra read
  local waited = math.max(0, now - tonumber(string.match(entry, '^%d+')))
  out[#out + 1] = {id, entry, attempt, prio, payload, waited}
end

for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[7], '-inf', now, 'LIMIT', 0, ARGV[9])) do
  local k_task = prefix .. id
  local rec = redis.call('HMGET', k_task, 'state', 'prio', 'payload', 'exp', 'attempts',
    'tenant')
  rec[2] = rec[2] or 'default'  -- (absent while queued: push in _lib.lua)
  if rec[4] and tonumber(rec[4]) <= now and (rec[1] == 'scheduled' or rec[1] == 'retrying') then
    expire_here(k_task, id, {rec[1], rec[2], nil, nil, rec[5]})
  elseif rec[1] == 'scheduled' or rec[1] == 'retrying' then
    push(k_task, STREAM[rec[2]], KEYS[4], id, rec[2], rec[3], rec[4], FAIR, rec[6])
    redis.call('HINCRBY', KEYS[4], rec[1] .. ':' .. rec[2], -1)
    redis.call('HDEL', k_task, 'payload', 'run_at')
    event(KEYS[6], maxlen, id, 'queued')
  end
  redis.call('ZREM', KEYS[7], id)
end

local lost = {}  -- {eval_id, reason} of tasks dead-lettered here because their entry was lost
local QK = {KEYS[8], KEYS[12], KEYS[6], KEYS[4]}  -- dlq, dlq index, events, counters (lose())

-- Issue 11: XCLAIM cannot be trusted to say that the entry is gone (Redis 7 drops a deleted
-- id from the PEL and returns nothing; 6.2 keeps it pending and returns a nil entry), and
-- returns nothing for an entry that is not pending. So the entry is looked up first: gone
-- -> the task is dead-lettered now (its payload lived only there); there but not pending
-- -> queued again. Either way it never stays `processing` with a dead worker's name.
local function reclaim(id)
  local k_task = prefix .. id
  local rec = redis.call('HMGET', k_task, 'state', 'prio', 'entry', 'lapses', 'attempts', 'tenant',
    'created')
  rec[2] = rec[2] or 'default'  -- (absent while queued: push in _lib.lua)
  if rec[1] ~= 'processing' then
    redis.call('ZREM', KEYS[5], id)
    return
  end
  if not TAKES[rec[2]] then return end  -- left to a consumer of its priority
  local k_stream = rec[6] and FAIR.stream[rec[2]] or STREAM[rec[2]]
  local fields = rec[3] and entry_fields(k_stream, rec[3])
  if not fields then
    if rec[3] then redis.call('XACK', k_stream, group, rec[3]) end
    redis.call('ZREM', KEYS[5], id)
    lost[#lost + 1] = {id, lose(k_task, id, rec[2], rec[3], 'processing', QK, maxlen, now,
      failure_ttl, rec[5])}
    return
  end
  local lapses = tonumber(rec[4] or '0') + 1
  redis.call('HSET', k_task, 'lapses', lapses)
  if lapses > max_lapses then
    redis.call('XACK', k_stream, group, rec[3])
    redis.call('XDEL', k_stream, rec[3])
    redis.call('ZREM', KEYS[5], id)
    local err = 'lease lapsed ' .. lapses .. ' times without a result (worker died or hung)'
    bury(k_task, KEYS[8], KEYS[12], KEYS[6], KEYS[4], maxlen, id, rec[2], fields['payload'] or '',
      err, '', rec[5], now, failure_ttl,
      cjson.encode({status = 'failed', output = err, exit_code = cjson.null}))
    return
  end
  local claimed = redis.pcall('XCLAIM', k_stream, group, consumer, 0, rec[3])
  if type(claimed) == 'table' and claimed.err and rec[6] and string.find(claimed.err, 'NOGROUP') then
    fair_fns().park(k_stream)  -- a tenant stream's group, recreated with its entries parked: again
    claimed = redis.pcall('XCLAIM', k_stream, group, consumer, 0, rec[3])
  end
  if type(claimed) == 'table' and claimed.err then
    if not string.find(claimed.err, 'NOGROUP') then error(claimed.err) end
    -- group lost: recreated from 0 below, so read_new delivers the entry again
    redis.call('XGROUP', 'CREATE', k_stream, group, '0', 'MKSTREAM')
    recreated = 1
    redis.call('ZREM', KEYS[5], id)
    return
  end
  if #claimed == 0 or not claimed[1] then
    requeue(k_task, k_stream, KEYS[4], KEYS[5], KEYS[6], group, id, rec[2], rec[3],
      fields['payload'] or '', maxlen, FAIR, rec[6])
    return
  end
  deliver(k_task, id, rec[3], rec[2], fields['payload'] or '', nil, rec[5], rec[7])
end

-- One EXISTS answers the usual case (not paused, no tenant's task anywhere) at no extra
-- cost; only when it counts something are the keys told apart.
local paused, fair_on, tenants_used = false, {}, false
if redis.call('EXISTS', KEYS[13], KEYS[16], KEYS[17], KEYS[18], KEYS[19], KEYS[20], KEYS[21]) > 0 then
  paused = redis.call('EXISTS', KEYS[13]) == 1
  for _, p in ipairs(PRIOS) do
    fair_on[p] = redis.call('EXISTS', FAIR.waiting[p]) == 1
    tenants_used = tenants_used or fair_on[p] or redis.call('EXISTS', FAIR.stream[p]) == 1
  end
end
if paused then count = 0 end

-- --- limits (RATE_LIMITS, QUEUE_MAX_IN_FLIGHT): fewer may be handed out than asked -------
local held, wake_rate = '', -1
local interval_us, burst, tat = tonumber(ARGV[13] or ''), tonumber(ARGV[14] or ''), nil
if interval_us and count > 0 then
  interval_us = interval_us * 1000
  local room
  room, tat = fair_lib().rate_room(KEYS[15], now * 1000, interval_us, burst)
  if room < count then count, held = room, 'rate' end
end
-- --- end of limits ---------------------------------------------------------------------
-- A consumer of some priorities only looks further down the lapsed leases (they may be of
-- priorities it does not take), and sets no wake time by them (it re-checks when idle).
local lapsed_limit = count
if not everything and count > 0 then lapsed_limit = count + 100 end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now, 'LIMIT', 0, lapsed_limit)) do
  if #out >= count then break end
  reclaim(id)
end

local function read_new(prio, n)
  local k_stream = STREAM[prio]
  local res = redis.pcall('XREADGROUP', 'GROUP', group, consumer, 'COUNT', n,
    'STREAMS', k_stream, '>')
  if type(res) == 'table' and res.err then
    if not string.find(res.err, 'NOGROUP') then error(res.err) end
    redis.call('XGROUP', 'CREATE', k_stream, group, '0', 'MKSTREAM')
    recreated = 1
    res = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', n,
      'STREAMS', k_stream, '>')
  end
  if not res or not res[1] then return 0 end
  local head, skipped, orphan = nil, 0, nil
  for _, item in ipairs(res[1][2]) do
    local fields = to_map(item[2])
    local k_task = prefix .. fields['id']
    local rec = redis.call('HMGET', k_task, 'entry', 'attempts', 'seq', 'created')
    -- the entry's sequence number: its record's (entry_seq); an entry of an earlier version
    -- carries it too. An orphan's is unknown: head moves on with the next live entry.
    head = fields['n'] or (rec[1] == item[1] and rec[3]) or head
    orphan = nil
    if rec[1] ~= item[1] then
      -- orphan entry (its record was cleared): drop it
      orphan = not fields['n'] and item[1]
      redis.call('XACK', k_stream, group, item[1])
      redis.call('XDEL', k_stream, item[1])
      skipped = skipped + 1
    elseif fields['x'] and tonumber(fields['x']) <= now then
      expire_here(k_task, fields['id'], {'queued', prio, item[1], head, rec[2]}, group)
      skipped = skipped + 1
    else
      deliver(k_task, fields['id'], item[1], prio, fields['payload'], fields['x'], rec[2],
        rec[4])
    end
  end
  -- An orphan read last, with no entry after it (none left to hand out): every sequence
  -- number of the priority was handed out or is a hole, so head is the counter's. Without
  -- this its unknown number would count as a queued task (and put every later task one
  -- place back) until the next live entry is read.
  if orphan and #redis.call('XRANGE', k_stream, '(' .. orphan, '+', 'COUNT', 1) == 0 then
    head = redis.call('HGET', KEYS[4], 'seq:' .. prio) or head
  end
  if head then
    redis.call('HSET', KEYS[4], 'head:' .. prio, head)
    redis.call('ZREMRANGEBYSCORE', HOLES[prio], '-inf', head)
  end
  return skipped
end

-- QUEUE_MAX_IN_FLIGHT: tasks taken over above were in flight already (still leased);
-- new ones only while the queue's leases (every processing task) are fewer than the cap.
local cap = tonumber(ARGV[15] or '')
if cap and count > #out then
  local room = math.max(0, cap - redis.call('ZCARD', KEYS[5]))
  if room < count - #out then count, held = #out + room, 'in_flight' end
end

-- --- fair share: a tenant's tasks, XCLAIMed from its priority's tenant stream ----------
-- Returns how many were handed out, and how many were not (expired, lost, gone).
local function take_tenant(prio, tenant, n)
  local k_wait, k_stream = FAIR.waiting[prio], FAIR.stream[prio]
  local members = redis.call('ZRANGEBYLEX', k_wait, '[' .. tenant .. '|', '(' .. tenant .. '}',
    'LIMIT', 0, n)
  if #members == 0 then return 0, 0 end
  redis.call('ZREM', k_wait, unpack(members))
  redis.call('HINCRBY', KEYS[4], 'tq:' .. prio, -#members)
  redis.call('HINCRBY', KEYS[4], 'thead:' .. prio, #members)  -- taken out of line (the pace)
  local given = 0
  for _, member in ipairs(members) do
    local seq, id = string.match(member, '^[^|]*|(%d+)|(.+)$')
    local k_task = prefix .. id
    local rec = redis.call('HMGET', k_task, 'state', 'entry', 'attempts', 'created')
    if rec[1] == 'queued' and rec[2] then
      local claimed = redis.pcall('XCLAIM', k_stream, group, consumer, 0, rec[2])
      if type(claimed) == 'table' and claimed.err and string.find(claimed.err, 'NOGROUP') then
        fair_fns().park(k_stream)  -- its group was lost: recreated, with the entries parked again
        claimed = redis.pcall('XCLAIM', k_stream, group, consumer, 0, rec[2])
      end
      local fields = type(claimed) == 'table' and not claimed.err and claimed[1] and
        claimed[1][2] and to_map(claimed[1][2]) or entry_fields(k_stream, rec[2])
      if not fields then
        lost[#lost + 1] = {id, lose(k_task, id, prio, rec[2], 'queued', QK, maxlen, now,
          failure_ttl, '0')}
      elseif fields['x'] and tonumber(fields['x']) <= now then  -- its expiry came first
        expire_here(k_task, id, {'queued', prio, rec[2], tonumber(seq), rec[3], tenant}, group)
      else
        -- (an entry not parked, after its group was lost, is handed out all the same)
        deliver(k_task, id, rec[2], prio, fields['payload'] or '', fields['x'], rec[3], rec[4])
        given = given + 1
      end
    end
  end
  return given, #members - given
end

-- The free slots of a level shared among its tenants; returns how many of the tasks
-- met were not handed out (expired, dropped, lost), as read_new does.
local function read_fair(prio, free)
  local F = fair_lib()
  local level = F.level(FAIR, KEYS[4], HOLES[prio], prio)
  F.join_default(level)
  local skipped = 0
  for _, c in ipairs(F.plan(level, free, F.weights(ARGV[12]))) do
    if c.n > 0 then
      local before, missed = #out, 0
      if c.t == 'default' then
        missed = read_new(prio, c.n)
      else
        _, missed = take_tenant(prio, c.t, c.n)
      end
      skipped = skipped + missed
      F.advance(level, c, #out - before)
    end
  end
  return skipped
end
-- --- end of fair share -----------------------------------------------------------------

-- Entries dropped or expired on the way take no slot: read on for the rest, so no entry
-- is left behind the stream tails the caller then blocks on.
for _, prio in ipairs(PRIOS) do
  if TAKES[prio] then
    local skipped = 1
    while skipped > 0 and count - #out > 0 do
      skipped = (fair_on[prio] and read_fair or read_new)(prio, count - #out)
    end
  end
  if count - #out <= 0 then break end
end
if tat then
  wake_rate = fair_lib().rate_take(KEYS[15], tat, #out, now * 1000, interval_us, burst)
end
if held ~= '' and #out < count then held = '' end  -- fewer than allowed: nothing is held

for i = 1, #leased, 2000 do
  redis.call('ZADD', KEYS[5], unpack(leased, i, math.min(i + 1999, #leased)))
end

-- Nothing more to hand out: say when to look again, and from which stream tails to block
-- (taken here, atomically with the reads, so an entry added after this script wakes the
-- caller's XREAD instead of being missed until the timeout).
local wake, tails = -1, {}
if #out < count or paused or held ~= '' then
  -- paused: no wake time (resuming announces itself on the wake channel)
  local timed = {KEYS[5], KEYS[7]}
  if paused then timed = {} elseif not everything then timed = {KEYS[7]} end
  for _, k in ipairs(timed) do
    local first = redis.call('ZRANGE', k, 0, 0, 'WITHSCORES')
    if first[2] and (wake < 0 or tonumber(first[2]) - now < wake) then
      wake = math.max(0, tonumber(first[2]) - now)
    end
  end
  local streams = {KEYS[1], KEYS[2], KEYS[3]}
  if tenants_used then streams = {KEYS[1], KEYS[2], KEYS[3], KEYS[16], KEYS[17], KEYS[18]} end
  for i, k in ipairs(streams) do
    if held ~= '' then break end  -- held by a limit: wait for it, not for new entries
    local last = redis.call('XREVRANGE', k, '+', '-', 'COUNT', 1)
    tails[i] = last[1] and last[1][1] or '0-0'
  end
  if held == 'rate' then wake = wake_rate end
end
if ARGV[16] == '1' then
  local best = ''
  for i, prio in ipairs(PRIOS) do
    if TAKES[prio] and queued_in(KEYS[4], KEYS[8 + i], prio) > 0 then best = prio break end
  end
  return {out, wake, recreated, tails, lost, expired, held, best}
end
return {out, wake, recreated, tails, lost, expired, held}
