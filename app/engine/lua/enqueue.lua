-- Enqueue one task atomically: duplicate check + record + stream entry (or schedule) + event
-- (enqueue_task in _enqueue.lua, whose semantics enqueue_batch.lua shares). With parents
-- (depends_on, here only), every check comes before any write: unknown parents refuse the
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
local id, prio = ARGV[1], ARGV[2]
local opts = ARGV[9] ~= '' and cjson.decode(ARGV[9]) or nil
local now = now_ms()
local Q = {counters = KEYS[3], scheduled = KEYS[4], events = KEYS[5], dedup_at = 12,
  holes_at = 6, fair_at = 16, maxlen = ARGV[5], channel = ARGV[6], q = ARGV[7],
  weights = opts and opts.w or false, now = now, now_s = false,
  fair = false, levels = false, created = 0, runs = false}

-- What only a task with parents (depends_on) needs, made only then (Redis runs the whole
-- chunk on every call: a top-level function is a closure made per call, with its
-- upvalues): its with_parents.
local parents_fns = #ARGV > 9 and function()
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

  -- A task with parents (enqueue_task's `parents`, in _enqueue.lua): created cancelled or
  -- deferred (a reply), or nil when every parent is already done (then it is queued as
  -- usual).
  local function with_parents(_, run_at, exp)
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
    redis.call('HSET', KEYS[1], 'created', string.format('%d', now), 'attempts', 0, 'prio', prio,
      'deps', cjson.encode(deps))
    mark(Q, KEYS[1], ARGV[8], opts)
    if allow then redis.call('HSET', KEYS[1], 'allow', 1) end
    if not reason and #pending == 0 and #remote == 0 then return nil end
    Q.created = Q.created + 1
    if reason then
      redis.call('HSET', KEYS[1], 'state', 'cancelled', 'finished', now, 'error', reason)
      redis.call('EXPIRE', KEYS[1], ARGV[11])
      redis.call('HINCRBY', KEYS[3], 'total:cancelled', 1)
      note(Q, id, 'cancelled')
      finished(KEYS[1], id, 'cancelled', now, ARGV[5], ARGV[11])
      return {'cancelled', reason}
    end
    redis.call('HSET', KEYS[1], 'state', 'deferred', 'payload', ARGV[3],
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
    if opts then enqueue_rare().adopt(Q, id, KEYS[1], opts, exp) end
    note(Q, id, 'deferred')
    return {'deferred', 0}
  end
  return with_parents
end

local reply = enqueue_task(Q, id, KEYS[1], KEYS[2], prio, ARGV[3], ARGV[4], ARGV[8], opts,
  parents_fns and parents_fns() or nil)
enqueue_done(Q)
return reply
