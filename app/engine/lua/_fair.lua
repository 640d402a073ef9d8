-- Fair share, the claim side, and positions under it; RATE_LIMITS' GCRA
-- (docs/flow-control.md). Prepended, after the library (_lib.lua, whose fair-share block
-- is the waiting side, fair_push), to claim.lua, enqueue.lua, status.lua and listing.lua.
-- Nothing here runs unless a tenant's task waits at that priority or a limit is
-- configured: the scripts branch on what they read or are handed first.

-- Every function here is made only when a script first asks for them (`fair_lib()`, once
-- per call): each closure a script defines costs every call of it, and the plain path
-- (no tenant, no limit) needs none of these.
local FAIR_LIB
local function fair_lib()
  if FAIR_LIB then return FAIR_LIB end
  -- TENANT_WEIGHTS as the scripts are handed them, 'name=w,…' ('': every tenant weighs 1).
  local function fair_weights(text)
    local weights = {}
    for name, w in string.gmatch(text or '', '([^,=]+)=([^,]+)') do weights[name] = tonumber(w) end
    return weights
  end

  -- One priority level of a queue, as the fair-share functions take it.
  local function fair_level(keys, k_counters, k_holes, prio)
    return {vt = keys.vtime[prio], wait = keys.waiting[prio], counters = k_counters,
      holes = k_holes, prio = prio}
  end

  -- Waiting tasks of one tenant at one level: `default`'s are the priority stream's.
  local function fair_backlog(level, tenant)
    if tenant == 'default' then
      return select(2, queued_in(level.counters, level.holes, level.prio))
    end
    return redis.call('ZLEXCOUNT', level.wait, '[' .. tenant .. '|', '(' .. tenant .. '}')
  end

  -- Tenant `default` takes part once others wait at its level: it joins when it has entries
  -- in the priority stream (lazily, here, so a task without a tenant costs its enqueue
  -- nothing).
  local function fair_join_default(level)
    if redis.call('ZSCORE', level.vt, 'default') then return end
    if fair_backlog(level, 'default') > 0 then fair_fns().join(level.vt, 'default') end
  end

  -- A binary heap of candidates by (virtual time, load order).
  local function heap_less(a, b)
    return a.v < b.v or (a.v == b.v and a.i < b.i)
  end

  local function heap_push(heap, c)
    heap[#heap + 1] = c
    local i = #heap
    while i > 1 and heap_less(heap[i], heap[math.floor(i / 2)]) do
      local up = math.floor(i / 2)
      heap[i], heap[up] = heap[up], heap[i]
      i = up
    end
  end

  local function heap_pop(heap)
    local top, last = heap[1], table.remove(heap)
    if #heap == 0 then return top end
    heap[1] = last
    local i = 1
    while true do
      local l, r, m = 2 * i, 2 * i + 1, i
      if heap[l] and heap_less(heap[l], heap[m]) then m = l end
      if heap[r] and heap_less(heap[r], heap[m]) then m = r end
      if m == i then return top end
      heap[i], heap[m] = heap[m], heap[i]
      i = m
    end
  end

  -- Which tenants the next `free` slots of a level go to, by weighted fair queuing (stride
  -- scheduling): the tenant with the smallest virtual time takes a slot and its time
  -- advances by 1/weight; ties go to the earlier in the zset's order. The zset is read from
  -- its front in batches and only as far as the picks reach (a tenant further back has a
  -- larger time, it would not be picked); idle tenants ahead of every waiting one are
  -- forgotten (back, they would start at the minimum anyway). Returns the candidates
  -- {t = tenant, n = slots, v0 = its time, w = weight}, in load order.
  local function fair_plan(level, free, weights)
    local heap, loaded, forget = {}, {}, {}
    local offset, horizon, exhausted, waiting_seen = 0, nil, false, false
    local batch = math.min(free, 64) + 8
    local function load()
      local rows = redis.call('ZRANGE', level.vt, offset, offset + batch - 1, 'WITHSCORES')
      offset = offset + #rows / 2
      exhausted = #rows / 2 < batch
      for i = 1, #rows, 2 do
        local t, v = rows[i], tonumber(rows[i + 1])
        horizon = v
        local b = fair_backlog(level, t)
        if b > 0 then
          waiting_seen = true
          local c = {t = t, v = v, v0 = v, b = b, n = 0, w = weights[t] or 1, i = #loaded + 1}
          loaded[#loaded + 1] = c
          heap_push(heap, c)
        elseif not waiting_seen then
          forget[#forget + 1] = t
        end
      end
    end
    load()
    for _ = 1, free do
      while not exhausted and (#heap == 0 or heap[1].v > horizon) do load() end
      if #heap == 0 then break end
      local c = heap_pop(heap)
      c.n, c.b, c.v = c.n + 1, c.b - 1, c.v + 1 / c.w
      if c.b > 0 then heap_push(heap, c) end
    end
    if #forget > 0 then redis.call('ZREM', level.vt, unpack(forget)) end
    return loaded
  end

  -- A tenant's virtual time after `given` tasks were handed out.
  local function fair_advance(level, c, given)
    if given > 0 then redis.call('ZADD', level.vt, c.v0 + given / c.w, c.t) end
  end

  -- How many of tenant `u`'s tasks (at time `v`, weight `w`, `b` waiting) start before the
  -- task of `tenant` that starts at time `target`: its j-th starts first while
  -- v + j/w < target, or equals it and `u` sorts first (the zset's order of ties).
  local function starts_before(u, v, w, b, tenant, target)
    local x = (target - v) * w
    local n = math.ceil(x - 1e-9)
    if u < tenant and math.abs(x - math.floor(x + 0.5)) < 1e-9 then n = math.floor(x + 0.5) + 1 end
    return math.max(0, math.min(n, b))
  end

  -- The tasks of other tenants expected to start before a task of `tenant` with `ahead` of
  -- its own tasks before it, from the virtual times and backlogs now: it starts when its
  -- tenant's time reaches v + ahead/w. Reads the tenants whose time is below that, at most
  -- `limit` of them (beyond, a lower bound). Tenant `default`, not yet joined (it joins at
  -- a claim), counts as joining at the smallest time.
  local function fair_ahead(level, tenant, ahead, weights, limit)
    local v = tonumber(redis.call('ZSCORE', level.vt, tenant))
    local function front()
      local first = redis.call('ZRANGE', level.vt, 0, 0, 'WITHSCORES')
      return tonumber(first[2] or '0')
    end
    if not v then v = front() end
    local target = v + ahead / (weights[tenant] or 1)
    local rows = redis.call('ZRANGEBYSCORE', level.vt, '-inf', target, 'WITHSCORES',
      'LIMIT', 0, limit)
    local before, seen_default = 0, tenant == 'default'
    for i = 1, #rows, 2 do
      local u = rows[i]
      seen_default = seen_default or u == 'default'
      if u ~= tenant then
        before = before + starts_before(u, tonumber(rows[i + 1]), weights[u] or 1,
          fair_backlog(level, u), tenant, target)
      end
    end
    if seen_default then return before end
    local waiting = fair_backlog(level, 'default')
    if waiting > 0 and not redis.call('ZSCORE', level.vt, 'default') then
      before = before + starts_before('default', front(), weights['default'] or 1, waiting,
        tenant, target)
    end
    return before
  end

  -- A queued task's place at its own priority level (1 = next) under fair share: its
  -- tenant's tasks before it, itself, and what fair share starts of the others' before it
  -- (docs/flow-control.md, *Positions*). `seq`: its record's (its tenant's number, or the
  -- priority stream's for tenant `default`); `level`: fair_level.
  local function fair_place(level, tenant, seq, weights)
    local own
    if tenant == 'default' then
      local head = tonumber(redis.call('HGET', level.counters, 'head:' .. level.prio) or '0')
      own = seq - head - redis.call('ZCOUNT', level.holes, '(' .. head, '(' .. seq) - 1
    else
      own = redis.call('ZLEXCOUNT', level.wait, '[' .. tenant .. '|',
        '(' .. tenant .. '|' .. string.format('%015d', seq))
    end
    return own + 1 + fair_ahead(level, tenant, own, weights, 1000)
  end

  -- RATE_LIMITS: the GCRA of one queue, its theoretical arrival time (TAT, µs) in one key.
  -- A start is allowed at `now` while TAT <= now + tolerance, tolerance = (burst - 1) ×
  -- interval, and moves TAT on by one interval: at most burst + T / interval starts in any
  -- T. Returns how many may start now and the TAT to count them from.
  local function rate_room(k_rate, now_us, interval_us, burst)
    local tat = math.max(tonumber(redis.call('GET', k_rate) or '0'), now_us)
    local tolerance = (burst - 1) * interval_us
    if tat > now_us + tolerance then return 0, tat end
    return math.floor((now_us + tolerance - tat) / interval_us) + 1, tat
  end

  -- `n` starts counted; returns the ms until the next one is allowed. The key expires when
  -- its TAT has passed (then the whole burst is allowed again, as with no key).
  local function rate_take(k_rate, tat, n, now_us, interval_us, burst)
    tat = math.ceil(tat + n * interval_us)
    if n > 0 then
      redis.call('SET', k_rate, string.format('%d', tat), 'PX',
        math.max(1, math.ceil((tat - now_us) / 1000)))
    end
    return math.max(0, math.ceil((tat - (burst - 1) * interval_us - now_us) / 1000))
  end
  -- The fair-share keys of one priority, `keys[i]` to `keys[i + 2]` (enqueue.lua's), as
  -- fair_keys (_lib.lua) gives them.
  local function here(keys, i, prio)
    return {stream = {[prio] = keys[i]}, waiting = {[prio] = keys[i + 1]},
      vtime = {[prio] = keys[i + 2]}}
  end

  FAIR_LIB = {weights = fair_weights, level = fair_level, join_default = fair_join_default,
    plan = fair_plan, advance = fair_advance, place = fair_place, rate_room = rate_room,
    rate_take = rate_take, here = here}
  return FAIR_LIB
end
