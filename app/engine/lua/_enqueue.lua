-- The enqueue of one task, shared by enqueue.lua (one task per call) and enqueue_batch.lua
-- (the tasks of one queue that a process enqueues in one event-loop turn, engine/intake.py):
-- the semantics are written once, here. Prepended, after the library and _fair.lua, to those
-- two scripts only (engine/scripts.py); like the library, each statement is kept only when
-- the script uses it.
--
-- `Q` is the queue as one script call sees it, shared by the tasks of the call: keys
-- counters, scheduled, events; dedup_at (where the expiries zset, the dedup hash and the
-- dedup ttl zset are in KEYS, in that order), holes_at (where the holes zsets of PRIOS are,
-- in that order), fair_at (prio -> where that priority's three fair-share keys start; a
-- number: the one priority of enqueue.lua's KEYS); maxlen, channel, q (the named queue, ''
-- default), weights (TENANT_WEIGHTS, or false); now (the Redis clock, ms: TIME once per
-- call) and now_s (the same as text, formatted once when needed, else false); and what the
-- call keeps: fair (prio -> the fair-share keys, made on first use), levels (prio -> {seq,
-- head, tenants' tasks, holes above head}, for positions; false in enqueue.lua: one task,
-- nothing to keep), created (tasks created) and runs (the events' per-minute counts: runs
-- of events of one ms and state, four slots each: entry, state, n, ms (false while the call
-- has one run); the last run current; false before the first), the last two written once by
-- enqueue_done. A task is its arguments: id, key (its hash), stream (of its priority),
-- prio, payload, run (the run time argument), cb (the callback mark), opts (decoded options
-- or nil; its tenant is opts.n).
-- Every field a script or this file sets is in Q's constructor (false when unset): a key
-- added later makes Lua rehash the table. Redis runs the whole chunk on every call, and
-- what a call allocates is paid again in garbage collection: Q stays within 16 fields (a
-- table's hash part is a power of two), a task is no table, each `local function` here is a
-- closure made per call (with an upvalue for each local it captures), so what only
-- options, tenants and delays use is made on first use (enqueue_rare), and a lone task
-- (enqueue.lua) makes no table it does not need (callgrind, a lone task: 288k instructions
-- before, 252k after; 254k for the single-task script before batching).

-- What only a task with options (dedup_key, expiry), a tenant or a delay needs, made on a
-- call's first such task (as fair_lib): a task without them pays none of these closures.
local ENQUEUE_RARE
local function enqueue_rare()
  if ENQUEUE_RARE then return ENQUEUE_RARE end
  -- A time argument: '+<ms>' after the Redis clock, else epoch ms. A delay counts from this
  -- server's clock, never from the clock of the process that sent it.
  local function moment(arg, Q)
    if string.sub(arg, 1, 1) == '+' then return Q.now + tonumber(string.sub(arg, 2)) end
    return tonumber(arg)
  end

  -- The fair-share keys of priority `prio` (a tenant's task waits there, see fair_push in
  -- _lib.lua), as _fair.lua's `here` makes them from KEYS at Q.fair_at: once per call and
  -- priority, only for a tenant's task or a position under fair share.
  local function fair_of(Q, prio)
    local made = Q.fair
    if not made then
      made = {high = false, default = false, low = false}
      Q.fair = made
    end
    local fair = made[prio]
    if not fair then
      local at = Q.fair_at
      if type(at) == 'table' then at = at[prio] end
      fair = fair_lib().here(KEYS, at, prio)
      made[prio] = fair
    end
    return fair
  end

  -- Issue 15: the task the dedup_key names (dedup hash), if it answers this request:
  -- `active` while it is live; `throttle` while the key's window (dedup ttl zset) is
  -- open; `debounce` while it is still scheduled: it takes this payload and its due time
  -- moves to now + ttl. Returns the reply, or nil to create a task.
  local function deduplicate(Q, id, key, payload, opts)
    local k_dedup_ttl = KEYS[Q.dedup_at + 2]
    local held = redis.call('HGET', KEYS[Q.dedup_at + 1], opts.k)
    if not held then return nil end
    local k_held = string.sub(key, 1, #key - #id) .. held
    local state = redis.call('HGET', k_held, 'state')
    if opts.m == 'throttle' then
      local until_ms = redis.call('ZSCORE', k_dedup_ttl, opts.k)
      if not until_ms or tonumber(until_ms) <= Q.now then return nil end
    elseif opts.m == 'debounce' then
      if state ~= 'scheduled' then return nil end
      local due = Q.now + opts.t
      redis.call('HSET', k_held, 'payload', payload, 'run_at', due)
      redis.call('ZADD', Q.scheduled, due, held)  -- later than before: no promoter needs waking
    elseif not (WAITING[state] or state == 'processing') then
      return nil
    end
    redis.call('HINCRBY', Q.counters, 'total:deduplicated', 1)
    return {'deduplicated', held, state or false}
  end

  -- Issue 15: a live task just created (with options; `exp`: its expiry or nil) takes its
  -- dedup_key (throttle: for the ttl; active and debounce: until it is terminal, see
  -- release_dedup in _lib.lua) and joins `expiries`.
  local function adopt(Q, id, key, opts, exp)
    local at = Q.dedup_at
    if opts.k then
      redis.call('HSET', KEYS[at + 1], opts.k, id)
      if opts.m == 'throttle' then
        redis.call('ZADD', KEYS[at + 2], Q.now + opts.t, opts.k)
      else
        redis.call('HSET', key, 'dk', opts.k)
      end
    end
    if exp then
      redis.call('HSET', key, 'exp', exp)
      schedule(KEYS[at], Q.channel, id, exp)  -- an earlier expiry wakes the promoters
    end
  end

  ENQUEUE_RARE = {moment = moment, fair_of = fair_of, deduplicate = deduplicate,
    adopt = adopt}
  return ENQUEUE_RARE
end

-- An event of the task (state change) on the events stream; its per-minute count is added
-- up and written once per call (enqueue_done), as complete_batch.lua does: events of one
-- ms and state in a row are one run (Q.runs).
local function note(Q, id, state)
  local entry = redis.call('XADD', Q.events, 'MAXLEN', '~', Q.maxlen, '*',
    'id', id, 'state', state, 'attempt', '')
  local runs = Q.runs
  if not runs then
    Q.runs = {entry, state, 1, false}  -- its ms: read when a second event comes (a batch)
    return
  end
  if not runs[4] then runs[4] = string.match(runs[1], '^%d+') end
  local ms = string.match(entry, '^%d+')
  local last = #runs - 3
  if ms == runs[last + 3] and state == runs[last + 1] then
    runs[last + 2] = runs[last + 2] + 1
  else
    runs[last + 4], runs[last + 5], runs[last + 6], runs[last + 7] = entry, state, 1, ms
  end
end

-- What a call pays once, at its end: `total:enqueued` and the per-minute stats (one
-- HINCRBY per minute and state).
local function enqueue_done(Q)
  if Q.created > 0 then redis.call('HINCRBY', Q.counters, 'total:enqueued', Q.created) end
  local runs = Q.runs
  if not runs then return end
  if #runs == 4 then return count_minute(Q.events, runs[1], runs[2], runs[3]) end
  local merged, order = {}, {}  -- minute:state -> its count; the first run of each
  for i = 1, #runs, 4 do
    local k = math.floor(tonumber(runs[i + 3]) / 60000) .. ':' .. runs[i + 1]
    if merged[k] then
      merged[k] = merged[k] + runs[i + 2]
    else
      merged[k] = runs[i + 2]
      order[#order + 1] = i
    end
  end
  for _, i in ipairs(order) do
    local k = math.floor(tonumber(runs[i + 3]) / 60000) .. ':' .. runs[i + 1]
    count_minute(Q.events, runs[i], runs[i + 1], merged[k])
  end
end

-- Marks of a new record: a named queue's task names it (`q`); a task with callbacks carries
-- `cb`; a tenant's its tenant.
local function mark(Q, key, cb, opts)
  if Q.q ~= '' then redis.call('HSET', key, 'q', Q.q) end
  if cb ~= '' then redis.call('HSET', key, 'cb', string.sub(cb, 2)) end
  if opts and opts.n then redis.call('HSET', key, 'tenant', opts.n) end
end

-- The place (1 = next) of a task just queued with number `seq`: every task waiting at the
-- priorities above its own, then its place at its own level (under fair share when
-- tenants' tasks wait there: _fair.lua). A batch reads each level's counters (seq, head,
-- holes above head, tenants' tasks: see queued_in) once per call (Q.levels); the call's own
-- pushes keep them up to date (enqueue_task), and nothing else in an enqueue moves them. A
-- lone task (Q.levels false) reads them into locals: no table to make.
local function position_of(Q, prio, tenant, seq)
  local position, levels = 0, Q.levels
  for i, p in ipairs(PRIOS) do
    local L = levels and levels[p]
    local l_seq, head, tq, holes
    if L then
      l_seq, head, tq, holes = L[1], L[2], L[3], L[4]
    else
      local c = redis.call('HMGET', Q.counters, 'seq:' .. p, 'head:' .. p, 'tq:' .. p)
      head = tonumber(c[2] or '0')
      l_seq, tq = tonumber(c[1] or '0'), tonumber(c[3] or '0')
      holes = redis.call('ZCOUNT', KEYS[Q.holes_at + i - 1], '(' .. head, '+inf')
      if levels then levels[p] = {l_seq, head, tq, holes} end
    end
    if p == prio then
      if tq > 0 then  -- tenants' tasks wait here: fair share (_fair.lua)
        local F = fair_lib()
        local level = F.level(enqueue_rare().fair_of(Q, p), Q.counters,
          KEYS[Q.holes_at + i - 1], p)
        return position + F.place(level, tenant or 'default', seq, F.weights(Q.weights))
      end
      return position + seq - head - holes
    end
    position = position + l_seq - head - holes + tq
  end
end

-- Enqueue one task: duplicate check + record + stream entry (or schedule) + event; with a
-- dedup_key (issue 15) a request the key's holder answers creates nothing (deduplicate);
-- with an expiry the task joins the queue's `expiries` zset. `parents`: enqueue.lua's
-- with_parents (Q, run time, expiry) for a task with depends_on, else nil. Returns the
-- script's reply for it (see enqueue.lua).
local function enqueue_task(Q, id, key, stream, prio, payload, run, cb, opts, parents)
  if opts and opts.k then
    local reply = enqueue_rare().deduplicate(Q, id, key, payload, opts)
    if reply then return reply end
  end
  if redis.call('EXISTS', key) == 1 then
    local ptr = redis.call('HMGET', key, 'state', 'q', 'at')
    if not ptr[1] and ptr[2] then return {'duplicate', ptr[2], ptr[3] or ''} end
    return {'duplicate'}
  end
  local run_at = string.sub(run, 1, 1) == '+' and enqueue_rare().moment(run, Q)
    or tonumber(run)
  local exp = opts and opts.x and enqueue_rare().moment(opts.x, Q)
  -- a task with parents: its `parents` wrote its first fields. No `attempts` field until
  -- the first delivery (absent reads as 0): 16 B less per queued task, a smaller listpack
  -- size class (issue 14); nor `created` while a task queued at once waits: its entry's
  -- id holds the time (created_of in _lib.lua), another 16 B. A scheduled task's goes with
  -- its state in one HSET (the clock as text: formatted once per call, when first needed).
  if parents then
    local reply = parents(Q, run_at, exp)
    if reply then return reply end
  else
    mark(Q, key, cb, opts)
  end
  Q.created = Q.created + 1
  if run_at > Q.now then
    if not parents then
      local created = Q.now_s
      if not created then
        created = string.format('%d', Q.now)
        Q.now_s = created
      end
      redis.call('HSET', key, 'created', created, 'state', 'scheduled', 'prio', prio,
        'payload', payload, 'run_at', run_at)
    else
      redis.call('HSET', key, 'state', 'scheduled', 'prio', prio, 'payload', payload,
        'run_at', run_at)
    end
    schedule(Q.scheduled, Q.channel, id, run_at)
    redis.call('HINCRBY', Q.counters, 'scheduled:' .. prio, '1')
    if opts then enqueue_rare().adopt(Q, id, key, opts, exp) end
    note(Q, id, 'scheduled')
    return {'scheduled', 0}
  end
  local tenant = opts and opts.n
  local fair = tenant and enqueue_rare().fair_of(Q, prio)
  local seq = push(key, stream, Q.counters, id, prio, payload, exp, fair, tenant)
  local L = Q.levels and Q.levels[prio]  -- (read by an earlier task of the call: count it)
  if L and tenant then L[3] = L[3] + 1 elseif L then L[1] = seq end
  if opts then enqueue_rare().adopt(Q, id, key, opts, exp) end
  note(Q, id, 'queued')
  return {'queued', position_of(Q, prio, tenant, seq)}
end
