-- Hand out up to COUNT tasks to one consumer, in strict priority order, in one step:
--   1. promote scheduled/retrying tasks that are due into their priority stream (one whose
--      expiry came first becomes `expired` instead);
--   2. take over tasks whose lease lapsed (their holder died), XCLAIM to this consumer;
--      past LEASE_MAX_LAPSES such a task is failed into the DLQ (poison guard); one whose
--      stream entry was deleted is dead-lettered as lost, one whose entry is no longer
--      pending is queued again (see reclaim);
--   3. XREADGROUP '>' on high, then default, then low, only as much as is still free; an
--      entry whose expiry (`x`, issue 15) has come is settled `expired`, not handed out.
-- Each delivery bumps `attempts`: (entry, attempts) is the fencing token of the holder.
-- A missing group (Redis restarted empty, DELETE /tasks) is recreated here.
-- KEYS: 1 stream:high, 2 stream:default, 3 stream:low, 4 counters, 5 leases, 6 events,
--       7 scheduled, 8 dlq, 9 holes:high, 10 holes:default, 11 holes:low, 12 dlq index,
--       13 paused flag (set: hand out nothing; due tasks are still promoted), 14 expiries,
--       15… the queue's effects (below)
-- ARGV: 1 group, 2 consumer, 3 count, 4 lease ms, 5 max lapses, 6 events maxlen,
--       7 task key prefix, 8 failure ttl s, 9 promote limit, 10 the priorities this
--       consumer takes, comma-separated ('' = all; CONSUME): others are neither read nor
--       taken over when their lease lapses, 11 result ttl s (of expired tasks), 12 '1': a
--       partition of a partitioned queue (engine/partitions.py): also answer the hint below
-- then the queue's effects (engine/keys.py QueueKeys.effects: what finished() and the
-- numbered-queue helpers of _lib.lua touch: dependants released into the schedule, stats,
-- callbacks and relays, the expiring zset, index, aliases, the reply queue's keys). Also
-- touched: records of this queue (dependants of the task, read from its record).
-- Returns {{{eval_id, entry, attempt, prio, payload, waited ms}...}, ms until the next due
--          task or lease expiry (-1: none), groups recreated (0/1), {tail id of each stream}
--          when idle, {{eval_id, reason}...} of tasks dead-lettered because their stream
--          entry was lost (see reclaim), {{eval_id, prio}...} of tasks expired here}.
--          `waited ms`: since the task entered its priority stream (queue wait). For a
--          partition (ARGV 12), a 7th element: the best priority this consumer takes that
--          still has queued tasks after this claim ('' none).
local group, consumer, count = ARGV[1], ARGV[2], tonumber(ARGV[3])
local lease_ms, max_lapses, maxlen = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local prefix, failure_ttl = ARGV[7], ARGV[8]
local STREAM = {high = KEYS[1], default = KEYS[2], low = KEYS[3]}
local HOLES = {high = KEYS[9], default = KEYS[10], low = KEYS[11]}
local now = now_ms()
local out, recreated = {}, 0
local TAKES = {}
for p in string.gmatch(ARGV[10] or '', '[^,]+') do TAKES[p] = true end
local everything = next(TAKES) == nil
if everything then TAKES = {high = true, default = true, low = true} end

local expired = {}  -- {eval_id, prio} of tasks expired here (issue 15)
local Q = {stream = STREAM, holes = HOLES, scheduled = KEYS[7], counters = KEYS[4],
  events = KEYS[6], expiries = KEYS[14]}

local function expire_here(k_task, id, rec, group)
  expire(k_task, id, rec, Q, now, maxlen, ARGV[11], group)
  expired[#expired + 1] = {id, rec[2]}
end

-- `exp`: the task's expiry, when it has one: started now, it leaves `expiries`. `attempts`:
-- the record's count so far (read with the entry). The leases are written in one ZADD once
-- every task is delivered (`leased`).
-- Numbers go to Redis as strings made once (each Lua number passed to redis.call is
-- formatted with printf again).
local leased, now_s, until_s = {}, tostring(now), tostring(now + lease_ms)
local function deliver(k_task, id, entry, prio, payload, exp, attempts)
  if exp then redis.call('ZREM', KEYS[14], id) end
  local attempt = tonumber(attempts or '0') + 1
  local attempt_s = tostring(attempt)
  redis.call('HSET', k_task, 'attempts', attempt_s, 'state', 'processing', 'started', now_s,
    'worker', consumer)
  leased[#leased + 1], leased[#leased + 2] = until_s, id
  event(KEYS[6], maxlen, id, 'processing', attempt_s)
  -- an entry id's first part is the Redis time of its XADD: the wait needs no extra read
  local waited = math.max(0, now - tonumber(string.match(entry, '^%d+')))
  out[#out + 1] = {id, entry, attempt, prio, payload, waited}
end

for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[7], '-inf', now, 'LIMIT', 0, ARGV[9])) do
  local k_task = prefix .. id
  local rec = redis.call('HMGET', k_task, 'state', 'prio', 'payload', 'exp', 'attempts')
  if rec[4] and tonumber(rec[4]) <= now and (rec[1] == 'scheduled' or rec[1] == 'retrying') then
    expire_here(k_task, id, {rec[1], rec[2], nil, nil, rec[5]})
  elseif rec[1] == 'scheduled' or rec[1] == 'retrying' then
    push(k_task, STREAM[rec[2]], KEYS[4], id, rec[2], rec[3], rec[4])
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
  local rec = redis.call('HMGET', k_task, 'state', 'prio', 'entry', 'lapses', 'attempts')
  if rec[1] ~= 'processing' then
    redis.call('ZREM', KEYS[5], id)
    return
  end
  if not TAKES[rec[2]] then return end  -- left to a consumer of its priority
  local k_stream = STREAM[rec[2]]
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
      fields['payload'] or '', maxlen)
    return
  end
  deliver(k_task, id, rec[3], rec[2], fields['payload'] or '', nil, rec[5])
end

local paused = redis.call('EXISTS', KEYS[13]) == 1
if paused then count = 0 end
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
  local head, skipped = nil, 0
  for _, item in ipairs(res[1][2]) do
    local fields = to_map(item[2])
    local k_task = prefix .. fields['id']
    head = fields['n']
    local rec = redis.call('HMGET', k_task, 'entry', 'attempts')
    if rec[1] ~= item[1] then
      -- orphan entry (its record was cleared): drop it
      redis.call('XACK', k_stream, group, item[1])
      redis.call('XDEL', k_stream, item[1])
      skipped = skipped + 1
    elseif fields['x'] and tonumber(fields['x']) <= now then
      expire_here(k_task, fields['id'], {'queued', prio, item[1], head, rec[2]}, group)
      skipped = skipped + 1
    else
      deliver(k_task, fields['id'], item[1], prio, fields['payload'], fields['x'], rec[2])
    end
  end
  if head then
    redis.call('HSET', KEYS[4], 'head:' .. prio, head)
    redis.call('ZREMRANGEBYSCORE', HOLES[prio], '-inf', head)
  end
  return skipped
end

-- Entries dropped or expired on the way take no slot: read on for the rest, so no entry
-- is left behind the stream tails the caller then blocks on.
for _, prio in ipairs(PRIOS) do
  if TAKES[prio] then
    local skipped = 1
    while skipped > 0 and count - #out > 0 do skipped = read_new(prio, count - #out) end
  end
  if count - #out <= 0 then break end
end

for i = 1, #leased, 2000 do
  redis.call('ZADD', KEYS[5], unpack(leased, i, math.min(i + 1999, #leased)))
end

-- Nothing more to hand out: say when to look again, and from which stream tails to block
-- (taken here, atomically with the reads, so an entry added after this script wakes the
-- caller's XREAD instead of being missed until the timeout).
local wake, tails = -1, {}
if #out < count or paused then
  -- paused: no wake time (resuming announces itself on the wake channel)
  local timed = {KEYS[5], KEYS[7]}
  if paused then timed = {} elseif not everything then timed = {KEYS[7]} end
  for _, k in ipairs(timed) do
    local first = redis.call('ZRANGE', k, 0, 0, 'WITHSCORES')
    if first[2] and (wake < 0 or tonumber(first[2]) - now < wake) then
      wake = math.max(0, tonumber(first[2]) - now)
    end
  end
  for i = 1, 3 do
    local last = redis.call('XREVRANGE', KEYS[i], '+', '-', 'COUNT', 1)
    tails[i] = last[1] and last[1][1] or '0-0'
  end
end
if ARGV[12] == '1' then
  local best = ''
  for i, prio in ipairs(PRIOS) do
    if TAKES[prio] and queued_in(KEYS[4], KEYS[8 + i], prio) > 0 then best = prio break end
  end
  return {out, wake, recreated, tails, lost, expired, best}
end
return {out, wake, recreated, tails, lost, expired}
