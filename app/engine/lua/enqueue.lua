-- Enqueue one task atomically: duplicate check + record + stream entry (or schedule) + event.
-- With parents (depends_on), every check comes before any write: unknown parents refuse the
-- task; a failed, cancelled or expired parent (without allow_failure) creates it `cancelled`;
-- parents still running make it `deferred` (each parent of this queue gets a `d:<id>` mark,
-- each of another queue was linked before this call: the task gets a `w:<parent>` mark, and
-- those parents are listed in `xdeps`; see "Dependencies" in _lib.lua); else it is queued.
-- With a dedup_key (issue 15) a request the key's holder answers creates nothing (see
-- deduplicate); with an expiry the task joins the queue's `expiries` zset.
-- KEYS: 1 task hash, 2 stream of its priority, 3 counters, 4 scheduled zset, 5 events,
--       6 holes:high, 7 holes:default, 8 holes:low, 9 stats, 10 callbacks, 11 expiring,
--       12 expiries zset, 13 dedup hash, 14 dedup ttl zset, 15 deferred zset,
--       16-18 fair share at its priority (keys.QueueKeys.fair_at: tenant stream, waiting
--       order, virtual times; a tenant's task waits there, see fair_push in _lib.lua),
--       19… (with depends_on) the task hashes of the parents in this queue, as ARGV 13…
-- ARGV: 1 eval_id, 2 priority, 3 payload (JSON), 4 run time: '0' now, '+<ms>' a delay
--       after the Redis clock (TIME), '<ms>' an absolute epoch time (past: now), 5 events maxlen,
--       6 schedule channel (told about new due times, so promoters can sleep until then),
--       7 named queue ('' = the default queue), 8 the callback mark: '' none, else '+' and
--       the task's callback_url ('+' alone when only STORAGE_SERVICE_URL applies; the hash
--       field `cb` holds what follows the '+'; see notify_callback in _lib.lua),
--       9 options: '' none, else JSON {x?: expiry ('+<ms>' after the Redis clock or '<ms>'
--       epoch), k?: dedup_key, m?: dedup mode, t?: dedup ttl ms, n?: tenant (fair share;
--       none: `default`), w?: TENANT_WEIGHTS 'name=w,…' (for a position under fair share)},
--       only with depends_on: 10 allow_failure ('1'/'0'), 11 result ttl s, 12 with parents
--       of other queues, every parent in order as JSON [[eval_id, state]…]: the state
--       linking it answered (engine/links.py), '' for a parent of this queue ('' when all
--       are of this queue), 13… the eval_ids of the parents in this queue
-- Also touched: the record of the task a dedup_key names; a task created cancelled goes
-- through finished() (_lib.lua), which may touch KEYS 9-15.
-- Returns {state, position} ; {'duplicate'} when the eval_id is known ({'duplicate', queue,
-- at} when it is the id directory's pointer to a task of that queue, which may be stale);
-- {'unknown', {ids}} when parents are unknown; {'elsewhere', {{id, queue}…}} when parents
-- named here are tasks of other queues (nothing written: the caller links them first);
-- {'cancelled', reason} when a parent already failed;
-- {'deduplicated', eval_id, state or false} when the dedup_key's holder answers the request.
local id, prio, payload, maxlen = ARGV[1], ARGV[2], ARGV[3], ARGV[5]
local opts = ARGV[9] ~= '' and cjson.decode(ARGV[9]) or nil

-- A time argument: '+<ms>' after the Redis clock, else epoch ms. A delay counts from this
-- server's clock, never from the clock of the process that sent it.
local function moment(arg, now)
  if string.sub(arg, 1, 1) == '+' then return now + tonumber(string.sub(arg, 2)) end
  return tonumber(arg)
end

-- Issue 15: the task the dedup_key names (hash KEYS[13]), if it answers this request:
-- `active` while it is live; `throttle` while the key's window (zset KEYS[14]) is open;
-- `debounce` while it is still scheduled: it takes this payload and its due time moves to
-- now + ttl. Returns the reply, or nil to create a task.
local function deduplicate()
  local held = redis.call('HGET', KEYS[13], opts.k)
  if not held then return nil end
  local k_held = string.sub(KEYS[1], 1, #KEYS[1] - #id) .. held
  local state = redis.call('HGET', k_held, 'state')
  if opts.m == 'throttle' then
    local until_ms = redis.call('ZSCORE', KEYS[14], opts.k)
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
local tenant = opts and opts.n or nil

-- The fair-share keys of its priority (KEYS 16-18), made only for a tenant's task.
local HERE = tenant and fair_lib().here(KEYS, 16, prio)
if redis.call('EXISTS', KEYS[1]) == 1 then
  local ptr = redis.call('HMGET', KEYS[1], 'state', 'q', 'at')
  if not ptr[1] and ptr[2] then return {'duplicate', ptr[2], ptr[3] or ''} end
  return {'duplicate'}
end
local now = now_ms()
local run_at = moment(ARGV[4], now)
local exp = opts and opts.x and moment(opts.x, now)

-- Issue 15: a live task just created takes its dedup_key (throttle: for the ttl; active and
-- debounce: until it is terminal, see release_dedup in _lib.lua) and joins `expiries`.
local function adopt()
  if not opts then return end
  if opts.k then
    redis.call('HSET', KEYS[13], opts.k, id)
    if opts.m == 'throttle' then
      redis.call('ZADD', KEYS[14], now + opts.t, opts.k)
    else
      redis.call('HSET', KEYS[1], 'dk', opts.k)
    end
  end
  if exp then
    redis.call('HSET', KEYS[1], 'exp', exp)
    schedule(KEYS[12], ARGV[6], id, exp)  -- an earlier expiry wakes the promoters
  end
end

-- Marks written before anything else can happen to the task: a named queue's task names
-- it (`q`); a task with callbacks carries `cb`.
local function mark()
  if ARGV[7] ~= '' then redis.call('HSET', KEYS[1], 'q', ARGV[7]) end
  if ARGV[8] ~= '' then redis.call('HSET', KEYS[1], 'cb', string.sub(ARGV[8], 2)) end
  if tenant then redis.call('HSET', KEYS[1], 'tenant', tenant) end
end

-- A parent's release (or cancel cascade) is one script: its deferred children are capped
-- so that script stays short (queue.MAX_DEPENDANTS; ~0.3 s per 10,000).
local MAX_DEPENDANTS = 10000

-- The parents' states, read before anything is written: {'unknown', ids} | {'crowded', id}
-- | {'elsewhere', {{id, queue}…}} | {pending parents of this queue, pending parents of
-- other queues, reason a failed parent gives, or nil}.
local function check_parents(allow)
  local unknown, elsewhere, pending, remote, reason = {}, {}, {}, {}, nil
  local function ended(pid, state)
    if not allow and not reason then reason = 'dependency ' .. pid .. ' ' .. state end
  end
  for i = 13, #ARGV do
    local rec = redis.call('HMGET', KEYS[i + 6], 'state', 'q', 'kids')
    local state = rec[1]
    if not state and rec[2] and rec[2] ~= ARGV[7] then
      elsewhere[#elsewhere + 1] = {ARGV[i], rec[2]}
    elseif not state then
      unknown[#unknown + 1] = ARGV[i]
    elseif state == 'failed' or state == 'cancelled' or state == 'expired' then
      ended(ARGV[i], state)
    elseif state ~= 'completed' then
      if tonumber(rec[3] or '0') >= MAX_DEPENDANTS then return {'crowded', ARGV[i]} end
      pending[#pending + 1] = i
    end
  end
  if #unknown > 0 then return {'unknown', unknown} end
  if #elsewhere > 0 then return {'elsewhere', elsewhere} end
  for _, link in ipairs(ARGV[12] ~= '' and cjson.decode(ARGV[12]) or {}) do
    if link[2] == 'failed' or link[2] == 'cancelled' or link[2] == 'expired' then
      ended(link[1], link[2])
    elseif link[2] ~= 'completed' and link[2] ~= '' then
      remote[#remote + 1] = link[1]
    end
  end
  return {pending, remote, reason}
end

-- A task with parents: created cancelled or deferred (a reply), or nil when every parent
-- is already done (the caller queues it as usual).
local function with_parents()
  local allow = ARGV[10] == '1'
  local checked = check_parents(allow)
  if type(checked[1]) == 'string' then return checked end
  local pending, remote, reason = checked[1], checked[2], checked[3]
  local deps = {}
  for i = 13, #ARGV do deps[#deps + 1] = ARGV[i] end
  if ARGV[12] ~= '' then
    deps = {}
    for _, link in ipairs(cjson.decode(ARGV[12])) do deps[#deps + 1] = link[1] end
  end
  redis.call('HSET', KEYS[1], 'created', now, 'attempts', 0, 'prio', prio,
    'deps', cjson.encode(deps))
  mark()
  if allow then redis.call('HSET', KEYS[1], 'allow', 1) end
  if not reason and #pending == 0 and #remote == 0 then return nil end
  redis.call('HINCRBY', KEYS[3], 'total:enqueued', 1)
  if reason then
    redis.call('HSET', KEYS[1], 'state', 'cancelled', 'finished', now, 'error', reason)
    redis.call('EXPIRE', KEYS[1], ARGV[11])
    redis.call('HINCRBY', KEYS[3], 'total:cancelled', 1)
    event(KEYS[5], maxlen, id, 'cancelled')
    finished(KEYS[1], id, 'cancelled', now, maxlen, ARGV[11])
    return {'cancelled', reason}
  end
  redis.call('HSET', KEYS[1], 'state', 'deferred', 'payload', payload,
    'waiting', #pending + #remote)
  if run_at > 0 then redis.call('HSET', KEYS[1], 'run_at', run_at) end
  for _, i in ipairs(pending) do
    redis.call('HSET', KEYS[i + 6], 'd:' .. id, '')
    redis.call('HINCRBY', KEYS[i + 6], 'kids', 1)
  end
  for _, pid in ipairs(remote) do redis.call('HSET', KEYS[1], 'w:' .. pid, 1) end
  local others = {}
  for _, link in ipairs(ARGV[12] ~= '' and cjson.decode(ARGV[12]) or {}) do
    if link[2] ~= '' then others[#others + 1] = link[1] end
  end
  if #others > 0 then redis.call('HSET', KEYS[1], 'xdeps', cjson.encode(others)) end
  redis.call('HINCRBY', KEYS[3], 'deferred:' .. prio, 1)
  redis.call('ZADD', KEYS[15], now, id)
  adopt()
  event(KEYS[5], maxlen, id, 'deferred')
  return {'deferred', 0}
end

if #ARGV > 9 then
  local reply = with_parents()
  if reply then return reply end
else
  -- no `attempts` field until the first delivery (absent reads as 0): 16 B less per queued
  -- task, a smaller listpack size class (issue 14); nor `created` while a task queued at
  -- once waits: its entry's id holds the time (created_of in _lib.lua), another 16 B
  if run_at > now then redis.call('HSET', KEYS[1], 'created', now) end
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
local seq = push(KEYS[1], KEYS[2], KEYS[3], id, prio, payload, exp, HERE, tenant)
adopt()
event(KEYS[5], maxlen, id, 'queued')
local position = 0
for i, p in ipairs(PRIOS) do
  if p == prio then
    local c = redis.call('HMGET', KEYS[3], 'head:' .. p, 'tq:' .. p)
    if tonumber(c[2] or '0') > 0 then  -- tenants' tasks wait here: fair share (_fair.lua)
      local F = fair_lib()
      local level = F.level(HERE or F.here(KEYS, 16, p), KEYS[3], KEYS[5 + i], p)
      position = position + F.place(level, tenant or 'default', seq, F.weights(opts and opts.w))
      break
    end
    local head = tonumber(c[1] or '0')
    position = position + seq - head - redis.call('ZCOUNT', KEYS[5 + i], '(' .. head, '+inf')
    break
  end
  position = position + queued_in(KEYS[3], KEYS[5 + i], p)
end
return {'queued', position}
