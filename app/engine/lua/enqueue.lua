-- Enqueue one task atomically: duplicate check + record + stream entry (or schedule) + event.
-- With parents (depends_on), every check comes before any write: unknown parents refuse the
-- task; a failed, cancelled or expired parent (without allow_failure) creates it `cancelled`;
-- parents still running make it `deferred` (it joins each one's `deps:<parent>` set, and
-- finishing the parent releases it, see release_children in _lib.lua); else it is queued as
-- usual. With a dedup_key (issue 15) a request the key's holder answers creates nothing (see
-- deduplicate); with an expiry the task joins the queue's `expiries` zset.
-- KEYS: 1 task hash, 2 stream of its priority, 3 counters, 4 scheduled zset, 5 events,
--       6 holes:high, 7 holes:default, 8 holes:low, 9 registry of named queues,
--       only with options (ARGV 9): 10 expiries zset, 11 dedup hash, 12 dedup ttl zset
-- ARGV: 1 eval_id, 2 priority, 3 payload (JSON), 4 run time: '0' now, '+<ms>' a delay
--       after the Redis clock (TIME), '<ms>' an absolute epoch time (past: now), 5 events maxlen,
--       6 schedule channel (told about new due times, so promoters can sleep until then),
--       7 named queue ('' = the default queue), 8 the callback mark: '' none, else '+' and
--       the task's callback_url ('+' alone when only STORAGE_SERVICE_URL applies; the hash
--       field `cb` holds what follows the '+'; see notify_callback in _lib.lua),
--       9 options: '' none, else JSON {x?: expiry ('+<ms>' after the Redis clock or '<ms>'
--       epoch), k?: dedup_key, m?: dedup mode, t?: dedup ttl ms},
--       only with depends_on: 10 allow_failure ('1'/'0'), 11 result ttl s, 12… parent eval_ids
-- Also touched, derived in Lua from the task key's base (same hash tag): parents' records
-- and `deps:<parent>` sets, the record of the task a dedup_key names; a task created
-- cancelled goes through finished() (_lib.lua); a deferred one joins the queue's
-- `deferred` zset (the counters key minus `counters`).
-- Returns {state, position} ; {'duplicate'} when the eval_id is known; {'unknown', {ids}}
-- when parents are unknown; {'cancelled', reason} when a parent already failed;
-- {'deduplicated', eval_id, state or false} when the dedup_key's holder answers the request.
local id, prio, payload, maxlen = ARGV[1], ARGV[2], ARGV[3], ARGV[5]
local opts = ARGV[9] ~= '' and cjson.decode(ARGV[9]) or nil

-- A time argument: '+<ms>' after the Redis clock, else epoch ms. A delay counts from this
-- server's clock, never from the clock of the process that sent it.
local function moment(arg, now)
  if string.sub(arg, 1, 1) == '+' then return now + tonumber(string.sub(arg, 2)) end
  return tonumber(arg)
end

-- Issue 15: the task the dedup_key names (hash KEYS[11]), if it answers this request:
-- `active` while it is live; `throttle` while the key's window (zset KEYS[12]) is open;
-- `debounce` while it is still scheduled: it takes this payload and its due time moves to
-- now + ttl. Returns the reply, or nil to create a task.
local function deduplicate()
  local held = redis.call('HGET', KEYS[11], opts.k)
  if not held then return nil end
  local k_held = string.sub(KEYS[1], 1, #KEYS[1] - #id) .. held
  local state = redis.call('HGET', k_held, 'state')
  if opts.m == 'throttle' then
    local until_ms = redis.call('ZSCORE', KEYS[12], opts.k)
    if not until_ms or tonumber(until_ms) <= now_ms() then return nil end
  elseif opts.m == 'debounce' then
    if state ~= 'scheduled' then return nil end
    local due = now_ms() + opts.t
    redis.call('HSET', k_held, 'payload', payload, 'run_at', due)
    redis.call('ZADD', KEYS[4], due, held)  -- later than before: no promoter needs waking
  elseif not (WAITING[state] or state == 'processing') then
    return nil
  end
  redis.call('HINCRBY', KEYS[3], 'total:deduplicated', 1)
  return {'deduplicated', held, state or false}
end

if opts and opts.k then
  local reply = deduplicate()
  if reply then return reply end
end
if redis.call('EXISTS', KEYS[1]) == 1 then return {'duplicate'} end
local now = now_ms()
local run_at = moment(ARGV[4], now)
local exp = opts and opts.x and moment(opts.x, now)

-- Issue 15: a live task just created takes its dedup_key (throttle: for the ttl; active and
-- debounce: until it is terminal, see release_dedup in _lib.lua) and joins `expiries`.
local function adopt()
  if not opts then return end
  if opts.k then
    redis.call('HSET', KEYS[11], opts.k, id)
    if opts.m == 'throttle' then
      redis.call('ZADD', KEYS[12], now + opts.t, opts.k)
    else
      redis.call('HSET', KEYS[1], 'dk', opts.k)
    end
  end
  if exp then
    redis.call('HSET', KEYS[1], 'exp', exp)
    schedule(KEYS[10], ARGV[6], id, exp)  -- an earlier expiry wakes the promoters
  end
end

-- Marks written before anything else can happen to the task: a named queue's task names
-- it (`q`, and the queue joins the registry); a task with callbacks carries `cb`.
local function mark()
  if ARGV[7] ~= '' then
    redis.call('HSET', KEYS[1], 'q', ARGV[7])
    redis.call('SADD', KEYS[9], ARGV[7])
  end
  if ARGV[8] ~= '' then redis.call('HSET', KEYS[1], 'cb', string.sub(ARGV[8], 2)) end
end

-- A parent's release (or cancel cascade) is one script: its deferred children are capped
-- so that script stays short (streams.MAX_DEPENDANTS; ~0.3 s per 10,000).
local MAX_DEPENDANTS = 10000

-- The parents' states, read before anything is written: {'unknown', ids} | {'crowded', id}
-- | {pending ids, reason a failed parent gives, or nil}.
local function check_parents(base, allow)
  local unknown, pending, reason = {}, {}, nil
  for i = 12, #ARGV do
    local state = redis.call('HGET', base .. 'task:' .. ARGV[i], 'state')
    if not state then
      unknown[#unknown + 1] = ARGV[i]
    elseif state == 'failed' or state == 'cancelled' or state == 'expired' then
      if not allow and not reason then reason = 'dependency ' .. ARGV[i] .. ' ' .. state end
    elseif state ~= 'completed' then
      if redis.call('SCARD', base .. 'deps:' .. ARGV[i]) >= MAX_DEPENDANTS then
        return {'crowded', ARGV[i]}
      end
      pending[#pending + 1] = ARGV[i]
    end
  end
  if #unknown > 0 then return {'unknown', unknown} end
  return {pending, reason}
end

-- A task with parents: created cancelled or deferred (a reply), or nil when every parent
-- is already done (the caller queues it as usual).
local function with_parents()
  local base, allow = base_of(KEYS[1], id), ARGV[10] == '1'
  local checked = check_parents(base, allow)
  if checked[1] == 'unknown' or checked[1] == 'crowded' then return checked end
  local pending, reason = checked[1], checked[2]
  local deps = {}
  for i = 12, #ARGV do deps[#deps + 1] = ARGV[i] end
  redis.call('HSET', KEYS[1], 'created', now, 'attempts', 0, 'prio', prio,
    'deps', cjson.encode(deps))
  mark()
  if allow then redis.call('HSET', KEYS[1], 'allow', 1) end
  if not reason and #pending == 0 then return nil end
  redis.call('HINCRBY', KEYS[3], 'total:enqueued', 1)
  if reason then
    redis.call('HSET', KEYS[1], 'state', 'cancelled', 'finished', now, 'error', reason)
    redis.call('EXPIRE', KEYS[1], ARGV[11])
    redis.call('HINCRBY', KEYS[3], 'total:cancelled', 1)
    event(KEYS[5], maxlen, id, 'cancelled')
    finished(KEYS[1], id, 'cancelled', now, maxlen, ARGV[11])
    return {'cancelled', reason}
  end
  redis.call('HSET', KEYS[1], 'state', 'deferred', 'payload', payload, 'waiting', #pending)
  if run_at > 0 then redis.call('HSET', KEYS[1], 'run_at', run_at) end
  for _, parent in ipairs(pending) do
    redis.call('SADD', base .. 'deps:' .. parent, id)
    redis.call('HSET', base .. 'task:' .. parent, 'kids', 1)
  end
  redis.call('HINCRBY', KEYS[3], 'deferred:' .. prio, 1)
  redis.call('ZADD', string.sub(KEYS[3], 1, -9) .. 'deferred', now, id)  -- <queue>deferred
  adopt()
  event(KEYS[5], maxlen, id, 'deferred')
  return {'deferred', 0}
end

if #ARGV > 11 then
  local reply = with_parents()
  if reply then return reply end
else
  redis.call('HSET', KEYS[1], 'created', now, 'attempts', 0)
  mark()
end
redis.call('HINCRBY', KEYS[3], 'total:enqueued', 1)
if run_at > now then
  redis.call('HSET', KEYS[1], 'state', 'scheduled', 'prio', prio, 'payload', payload,
    'run_at', run_at)
  schedule(KEYS[4], ARGV[6], id, run_at)
  redis.call('HINCRBY', KEYS[3], 'scheduled:' .. prio, 1)
  adopt()
  event(KEYS[5], maxlen, id, 'scheduled')
  return {'scheduled', 0}
end
local seq = push(KEYS[1], KEYS[2], KEYS[3], id, prio, payload, exp)
adopt()
event(KEYS[5], maxlen, id, 'queued')
local position = 0
for i, p in ipairs(PRIOS) do
  if p == prio then
    local head = tonumber(redis.call('HGET', KEYS[3], 'head:' .. p) or '0')
    position = position + seq - head - redis.call('ZCOUNT', KEYS[5 + i], '(' .. head, '+inf')
    break
  end
  position = position + queued_in(KEYS[3], KEYS[5 + i], p)
end
return {'queued', position}
