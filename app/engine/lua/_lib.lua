-- Helpers prepended by engine/scripts.py to every script (each script keeps one SHA).
-- Time is always Redis server time, in milliseconds: leases and schedules never
-- depend on the clocks of the service processes.
local PRIOS = {'high', 'default', 'low'}
local TERMINAL_STATES = {completed = true, failed = true, cancelled = true, expired = true}

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function to_map(flat)
  local map = {}
  for i = 1, #flat, 2 do map[flat[i]] = flat[i + 1] end
  return map
end

-- Every state change goes to the capped events stream; all but `processing` are also
-- counted per minute for the dashboard's throughput and failure-rate plots and its history,
-- in the queue's `stats` hash beside it (`<epoch minute>:<state>` -> count; the `minute`
-- field is the latest minute counted), kept STATS_MINUTES (48 h; engine/history.py rolls
-- finished hours up into hour hashes kept 90 days). One hash, so every key the scripts
-- touch is declared (a key per minute could not be: its name is the server time).
local STATS_MINUTES = 2880
local STATS_STATES = {'queued', 'scheduled', 'retrying', 'deferred', 'completed', 'failed',
  'cancelled', 'expired'}

-- The first count of a new minute drops the fields of the minutes that aged out since the
-- last one counted: a few HDELs per minute; after a long idle gap, one HKEYS instead.
local function trim_stats(k_stats, last, minute)
  local cut = minute - STATS_MINUTES
  local old = {}
  if minute - last > 60 then
    for _, f in ipairs(redis.call('HKEYS', k_stats)) do
      local m = tonumber(string.match(f, '^(%d+):'))
      if m and m <= cut then old[#old + 1] = f end
    end
  else
    for m = last - STATS_MINUTES + 1, cut do
      for _, st in ipairs(STATS_STATES) do old[#old + 1] = m .. ':' .. st end
    end
  end
  for i = 1, #old, 1000 do
    redis.call('HDEL', k_stats, unpack(old, i, math.min(i + 999, #old)))
  end
end

-- Count `n` changes to `state` in the stats beside `k_events`, in the minute of the events
-- entry `entry` (a batch of settles counts once per minute: complete_batch.lua).
local function count_minute(k_events, entry, state, n)
  local k_stats = string.sub(k_events, 1, -7) .. 'stats'
  local minute = math.floor(tonumber(string.match(entry, '^%d+')) / 60000)
  if redis.call('HINCRBY', k_stats, minute .. ':' .. state, n) > n then return end
  local last = tonumber(redis.call('HGET', k_stats, 'minute') or '0')
  if last >= minute then return end
  redis.call('HSET', k_stats, 'minute', minute)
  trim_stats(k_stats, last, minute)
end

local function event(k_events, maxlen, id, state, attempt)
  local entry = redis.call('XADD', k_events, 'MAXLEN', '~', maxlen, '*',
    'id', id, 'state', state, 'attempt', attempt or '')
  if state ~= 'processing' then count_minute(k_events, entry, state, 1) end
end

-- Queued tasks of one priority level: entries of its stream (tenant `default`), enqueued
-- (seq) minus delivered (head) minus cancelled while queued (holes above head), plus tasks
-- of other tenants (`tq:<prio>`, fair share). Returns the total, then the two parts.
-- O(log n).
local function queued_in(k_counters, k_holes, prio)
  local c = redis.call('HMGET', k_counters, 'seq:' .. prio, 'head:' .. prio, 'tq:' .. prio)
  local head = tonumber(c[2] or '0')
  local own = tonumber(c[1] or '0') - head - redis.call('ZCOUNT', k_holes, '(' .. head, '+inf')
  local tenants = tonumber(c[3] or '0')
  return own + tenants, own, tenants
end

-- The fields of a live stream entry, nil when it is gone (XRANGE on one id is O(log n)).
local function entry_fields(k_stream, entry)
  local found = redis.call('XRANGE', k_stream, entry, entry)
  if #found == 0 then return nil end
  return to_map(found[1][2])
end

-- The payload of a live stream entry ('' when it is gone).
local function entry_payload(k_stream, entry)
  local fields = entry_fields(k_stream, entry)
  return fields and fields['payload'] or ''
end

-- Issue 14: a task queued at its creation has no `created` in its record while it waits:
-- the id of its stream entry (XADDed by the creating script) holds that time. The record
-- gets it when the task leaves the queue (delivered, cancelled, expired, dead-lettered),
-- before it lets go of the entry; readers of a waiting record take the entry's time
-- (engine/records.py created_ms).
local function created_of(entry)
  return string.match(entry, '^%d+')
end

local function keep_created(k_task, entry)
  if entry then redis.call('HSETNX', k_task, 'created', created_of(entry)) end
end

-- The sequence number of a priority stream's entry `entry` (fields `fields`): its `n`
-- (entries written before issue 14's memory change), else the `seq` of the record that
-- holds it (`prefix`: the task key prefix); nil for an entry no record holds (an orphan).
local function entry_seq(prefix, entry, fields)
  if fields['n'] then return tonumber(fields['n']) end
  local rec = redis.call('HMGET', prefix .. (fields['id'] or ''), 'entry', 'seq')
  if rec[1] == entry and rec[2] then return tonumber(rec[2]) end
  return nil
end

-- --- fair share, the waiting side (docs/flow-control.md; the claim side is _fair.lua) ------
-- A task of a tenant other than `default` waits in its priority's tenant stream
-- (`stream:<prio>:tenants`), where its entry is read at once by the pseudo-consumer
-- `~waiting` of group `workers` ("parked"): a claim hands it out of stream order with
-- XCLAIM (only a pending entry can be claimed), and from then on renewal, lease takeover,
-- settling and fsck treat it as any entry of a priority stream. Its place in line is the
-- member `<tenant>|<seq>|<eval_id>` of `tenants:<prio>:waiting` (every score 0: a tenant's
-- members are one lexical range in FIFO order, `|` sorting after every character a tenant
-- name may hold); `tenants:<prio>` holds the tenants' virtual times; counters `tseq:<prio>`
-- number them and `tq:<prio>` counts them (read with the stream's own counters for free).
local FAIR_GROUP, PARKED = 'workers', '~waiting'  -- keys.GROUP; never a host:pid consumer

-- A queue's fair-share keys from `keys` at `i` (engine/keys.py QueueKeys.fair: the tenant
-- streams, waiting orders and virtual times, each high, default, low).
local function fair_keys(keys, i)
  return {stream = {high = keys[i], default = keys[i + 1], low = keys[i + 2]},
    waiting = {high = keys[i + 3], default = keys[i + 4], low = keys[i + 5]},
    vtime = {high = keys[i + 6], default = keys[i + 7], low = keys[i + 8]}}
end

-- The waiting side's functions, made on first use (`fair_fns()`, once per call of a
-- script): each closure a script defines costs every call of it (Redis runs the whole
-- library each time), and the plain path (no tenant) needs none of these.
local FAIR_FNS
local function fair_fns()
  if FAIR_FNS then return FAIR_FNS end
  local function fair_member(tenant, seq, id)
    return tenant .. '|' .. string.format('%015d', seq) .. '|' .. id
  end

  -- Park every undelivered entry of a tenant stream with `~waiting`; a missing group (first
  -- use, DELETE /tasks, a restart without data) is created from 0, parking what was left.
  local function park(k_stream)
    local read = {'XREADGROUP', 'GROUP', FAIR_GROUP, PARKED, 'COUNT', 1000, 'STREAMS', k_stream, '>'}
    local res = redis.pcall(unpack(read))
    if type(res) == 'table' and res.err then
      if not string.find(res.err, 'NOGROUP') then error(res.err) end
      redis.call('XGROUP', 'CREATE', k_stream, FAIR_GROUP, '0', 'MKSTREAM')
      redis.call(unpack(read))
    end
  end

  -- A tenant with waiting tasks is in its priority's virtual-time zset. One still there
  -- (waiting, or idle but ahead of the others) keeps its time; one new, or back after the
  -- others passed its time, starts at the smallest time there: max(its old time, the
  -- minimum), so nobody saves up credit while idle.
  local function fair_join(k_vt, tenant)
    if redis.call('ZSCORE', k_vt, tenant) then return end
    local front = redis.call('ZRANGE', k_vt, 0, 0, 'WITHSCORES')
    redis.call('ZADD', k_vt, front[2] or 0, tenant)
  end

  local function fair_push(k_task, k_counters, id, prio, payload, keys, tenant, exp)
    local seq = redis.call('HINCRBY', k_counters, 'tseq:' .. prio, 1)
    redis.call('HINCRBY', k_counters, 'tq:' .. prio, 1)
    local entry
    if exp then  -- its expiry, as in push: the claim meets it in the entry
      entry = redis.call('XADD', keys.stream[prio], '*', 'id', id, 'payload', payload, 'x', exp)
    else
      entry = redis.call('XADD', keys.stream[prio], '*', 'id', id, 'payload', payload)
    end
    park(keys.stream[prio])
    redis.call('ZADD', keys.waiting[prio], 0, fair_member(tenant, seq, id))
    fair_join(keys.vtime[prio], tenant)
    redis.call('HSET', k_task, 'state', 'queued', 'prio', prio, 'seq', seq, 'entry', entry)
    return seq
  end

  -- A tenant stream left without entries is deleted (its group with it), so a queue whose
  -- tenants' tasks are all done costs its claims nothing more (claim.lua's one EXISTS).
  local function fair_tidy(k_stream)
    if redis.call('XLEN', k_stream) == 0 then redis.call('DEL', k_stream) end
  end
  FAIR_FNS = {member = fair_member, park = park, join = fair_join, push = fair_push,
    tidy = fair_tidy}
  return FAIR_FNS
end

-- --- end of fair share, the waiting side ----------------------------------------------

-- Append a task to its priority stream: it becomes `queued` with the next sequence number.
-- `exp`: its expiry (epoch ms, issue 15), carried in the entry as `x` so the claim that
-- meets the entry sees it without reading the record; nil for none. A task of a tenant
-- (its record's `tenant`) waits in the fair-share structures `fair` (fair_keys) instead.
-- The sequence number lives in the record (`seq`) only: entries of earlier versions also
-- carry it as `n` (entry_seq). Issue 14: 5 B less per entry, so a 4096-byte stream node
-- holds one task more with a 200-byte `code` (16 instead of 15: 256 B per entry, not 273).
-- Nor does a waiting record of priority `default` name it (`prio` absent reads as
-- `default`; the first delivery writes it): with `created` left to the entry, its listpack
-- fits 64 B instead of 80.
local function push(k_task, k_stream, k_counters, id, prio, payload, exp, fair, tenant)
  if tenant then
    return fair_fns().push(k_task, k_counters, id, prio, payload, fair, tenant, exp)
  end
  local seq = redis.call('HINCRBY', k_counters, 'seq:' .. prio, 1)
  local entry
  if exp then
    entry = redis.call('XADD', k_stream, '*', 'id', id, 'payload', payload, 'x', exp)
  else
    entry = redis.call('XADD', k_stream, '*', 'id', id, 'payload', payload)
  end
  if prio == 'default' then
    redis.call('HSET', k_task, 'state', 'queued', 'seq', seq, 'entry', entry)
  else
    redis.call('HSET', k_task, 'state', 'queued', 'prio', prio, 'seq', seq, 'entry', entry)
  end
  return seq
end

-- Numbered queues (engine/keys.py) keep, besides the structures of every queue, an `index`
-- zset of the items still in the queue (score = the item's number) and an aliases hash
-- (`rid`: alias -> number). Their task hashes name them: `ix` (the index zset), `rid` (the
-- item's alias, if any), and for an item that is answered into another queue, `sink` (that
-- reply queue's key prefix; the field keeps the name of the numbered queues' first user,
-- PAI-EAS, so tasks stored before the engine knew no PAI-EAS stay readable). Keys derived from a prefix share its hash tag. An item whose
-- record carries `error` and whose payload is empty is the answer of a task that failed
-- without one (see answer_numbered).
local function numbered_append(prefix, prio, payload, alias, reply, maxlen, err)
  local k_counters, k_index = prefix .. 'counters', prefix .. 'index'
  local n = redis.call('HINCRBY', k_counters, 'index', 1)
  local id = tostring(n)
  local k_task = prefix .. 'task:' .. id
  redis.call('HSET', k_task, 'created', now_ms(), 'ix', k_index)  -- no attempts yet: 0
  if reply ~= '' then redis.call('HSET', k_task, 'sink', reply) end
  if alias ~= '' then
    redis.call('HSET', prefix .. 'rid', alias, id)
    redis.call('HSET', k_task, 'rid', alias)
  end
  if err then redis.call('HSET', k_task, 'error', err) end
  redis.call('HINCRBY', k_counters, 'total:enqueued', 1)
  push(k_task, prefix .. 'stream:' .. prio, k_counters, id, prio, payload)
  redis.call('ZADD', k_index, n, id)
  event(prefix .. 'events', maxlen, id, 'queued')
  return n
end

-- A finished item of a numbered queue leaves its index (and its alias); one with a reply
-- queue leaves its answer there, as a new item aliased by its own number: `answer`, or,
-- failing (`err`) without one, an empty item whose record carries the error.
local function answer_numbered(k_task, id, answer, maxlen, err)
  local rec = redis.call('HMGET', k_task, 'ix', 'sink', 'rid')
  if rec[1] then redis.call('ZREM', rec[1], id) end
  if rec[3] then redis.call('HDEL', string.sub(rec[1], 1, -6) .. 'rid', rec[3]) end
  if not rec[2] then return end
  if answer and answer ~= '' then
    numbered_append(rec[2], 'default', answer, id, '', maxlen)
  elseif err then
    numbered_append(rec[2], 'default', '', id, '', maxlen, err)
  end
end


-- A task key minus `task:<id>` is its queue's key prefix (each legacy queue has its own
-- hash tag, engine/keys.py): the keys a script derives from it are that queue's own, and
-- the caller declares them in KEYS.
local function base_of(k_task, id)
  return string.sub(k_task, 1, #k_task - #id - 5)
end

-- By-id calls (status, complete, fail, cancel) are sent with the keys of the queue the
-- caller assumed; a task of another legacy queue answers {'queue', its queue} and the caller
-- re-sends with that queue's keys. In the default queue's key space, a task of a named
-- queue is a pointer `{q, at}` (the id directory, engine/keys.py); a named queue's own
-- records carry its name too. One HGET (`q`, absent for the default queue); nil when the
-- keys are right or the task is unknown.
local function wrong_queue(k_task, expected)
  local q = redis.call('HGET', k_task, 'q') or ''
  if q == (expected or '') then return nil end
  if q == '' and redis.call('EXISTS', k_task) == 0 then return nil end
  return {'queue', q}
end

-- After-effects of a task that reached a terminal state go to its queue's `callbacks`
-- stream (group `senders`; runtime/callbacks.py reads every legacy queue's): result
-- callbacks (issue 6, item 2), one self-contained entry per task with a callback mark,
-- delivered and then removed; and dependency relays (see release_children). Not capped:
-- an entry leaves only once handled or given up on. `url` is the task's callback_url (''
-- when only STORAGE_SERVICE_URL applies).
local function notify_callback(k_task, id, state, now, maxlen)
  local rec = redis.call('HMGET', k_task, 'cb', 'q', 'result', 'error', 'attempts', 'finished')
  local kind, body = 'error', rec[4] or state
  if state == 'completed' then kind, body = 'result', rec[3] or 'null' end
  local fields = {'id', id, 'status', state, kind, body, 'attempts', rec[5] or '0',
    'finished', rec[6] or now, 'url', rec[1] or ''}
  if rec[2] and rec[2] ~= '' then fields[#fields + 1], fields[#fields + 2] = 'queue', rec[2] end
  redis.call('XADD', base_of(k_task, id) .. 'callbacks', '*', unpack(fields))
end

-- Put a task in a queue's schedule (zset `k_sched`) at `due` ms. Promoters sleep until the
-- earliest due time, so only an earlier one is announced on the queue's `channel`.
local function schedule(k_sched, channel, id, due)
  local first = redis.call('ZRANGE', k_sched, 0, 0, 'WITHSCORES')
  redis.call('ZADD', k_sched, due, id)
  if not first[2] or due < tonumber(first[2]) then redis.call(QUEUE_PUBLISH, channel, due) end
end

-- Deferred tasks are also listed in their queue's `deferred` zset (score: creation time), so
-- `GET /tasks?state=deferred` pages through them without a scan (engine/listing.py);
-- every way out of `deferred` removes them from it.

-- Dependencies (issue 6, item 1). A parent's record lists its dependants: `d:<id>` for one
-- of its own queue, `x:<id>` = its queue's name for one of another queue, and `kids` counts
-- them. A dependant's record lists its parents (`deps`, JSON), counts those unfinished
-- (`waiting`), and marks each unfinished parent of another queue (`w:<parent>`): that one's
-- end arrives by relay (engine/links.py), once, since only the relay that removes the mark
-- counts. Everything lives in task records, so a cascade touches no key a caller could not
-- declare but records of the same queue.

-- A deferred task whose last parent finished: queued at its priority, or scheduled when
-- its `run_at` is still ahead. A tenant's task (fair share) is scheduled due now instead:
-- the next claim or promoter moves it into its tenant's waiting order, so the scripts that
-- finish tasks need not declare the fair-share keys (engine/keys.py, `effects`). `qp`: its
-- queue's key prefix; `rec`: its state, prio, q, allow, payload, run_at, attempts; `exp`:
-- its expiry (ms) or nil.
local function release_child(k_child, cid, qp, rec, now, maxlen, exp)
  local prio, payload, run_at = rec[2], rec[5], tonumber(rec[6] or '0')
  redis.call('HINCRBY', qp .. 'counters', 'deferred:' .. prio, -1)
  redis.call('ZREM', qp .. 'deferred', cid)
  redis.call('HDEL', k_child, 'waiting')
  if run_at > now or redis.call('HEXISTS', k_child, 'tenant') == 1 then
    run_at = math.max(run_at, now)
    redis.call('HSET', k_child, 'state', 'scheduled', 'run_at', run_at)
    schedule(qp .. 'scheduled', qp .. 'schedule', cid, run_at)
    redis.call('HINCRBY', qp .. 'counters', 'scheduled:' .. prio, 1)
    event(qp .. 'events', maxlen, cid, 'scheduled')
    return
  end
  push(k_child, qp .. 'stream:' .. prio, qp .. 'counters', cid, prio, payload, exp)
  redis.call('HDEL', k_child, 'payload', 'run_at')
  event(qp .. 'events', maxlen, cid, 'queued')
end

-- Count one dependant fewer on a parent record (the field `f` was removed).
local function drop_kid(k_parent)
  if redis.call('HINCRBY', k_parent, 'kids', -1) <= 0 then redis.call('HDEL', k_parent, 'kids') end
end

-- A deferred task that is cancelled leaves the records of its parents of its own queue, so
-- a later task reusing its eval_id (after its record expired) is never released by them.
-- Parents of other queues keep their `x:` mark: their relay finds no `w:` mark to take.
local function leave_parents(k_child, cid)
  local base = base_of(k_child, cid)
  local deps = redis.call('HGET', k_child, 'deps')
  if not deps then return end
  for _, parent in ipairs(cjson.decode(deps)) do
    local k_parent = base .. 'task:' .. parent
    if redis.call('HDEL', k_parent, 'd:' .. cid) == 1 then drop_kid(k_parent) end
  end
end

-- A deferred task whose parent `pid` ended `state` (failed / cancelled / expired):
-- cancelled, with the reason in `error`; it keeps the parent's record TTL. `exp`: its
-- expiry (ms) or nil; with one it leaves its queue's `expiries`.
local function cancel_child(k_child, cid, qp, rec, pid, state, now, maxlen, ttl, exp)
  redis.call('HINCRBY', qp .. 'counters', 'deferred:' .. rec[2], -1)
  redis.call('ZREM', qp .. 'deferred', cid)
  leave_parents(k_child, cid)
  if exp then redis.call('ZREM', qp .. 'expiries', cid) end
  redis.call('HSET', k_child, 'state', 'cancelled', 'finished', now,
    'error', 'dependency ' .. pid .. ' ' .. state)
  redis.call('HDEL', k_child, 'payload', 'run_at', 'waiting')
  redis.call('EXPIRE', k_child, ttl)
  redis.call('HINCRBY', qp .. 'counters', 'total:cancelled', 1)
  event(qp .. 'events', maxlen, cid, 'cancelled', rec[7])
end

-- Parent `pid` of the deferred task `k_child` ended `state`: the task is cancelled (a failed
-- or cancelled parent, without allow_failure), released (its last parent), or waits on.
-- Returns 'cancelled' (then appended to `todo`, for finished()), 'released' or 'waiting'.
local function parent_ended(k_child, cid, qp, rec, pid, state, now, maxlen, ttl, todo)
  if state ~= 'completed' and rec[4] ~= '1' then
    cancel_child(k_child, cid, qp, rec, pid, state, now, maxlen, ttl, rec[8])
    todo[#todo + 1] = {k_child, cid, 'cancelled'}
    return 'cancelled'
  end
  if redis.call('HINCRBY', k_child, 'waiting', -1) > 0 then return 'waiting' end
  release_child(k_child, cid, qp, rec, now, maxlen, rec[8])
  return 'released'
end

local CHILD_FIELDS = {'state', 'prio', 'q', 'allow', 'payload', 'run_at', 'attempts', 'exp'}

-- Children of a finished parent: those of its queue released or cancelled here (those that
-- became terminal are appended to `todo` as {k_task, id, state}); for each of another
-- queue, a relay entry on this queue's callbacks stream (`relay` = the child's queue,
-- `child`, `id` = the parent, `status`, `ttl` for a child it cancels), which
-- runtime/callbacks.py hands to the child's
-- queue (engine/links.py). One HKEYS, then O(1) work per child; a child no longer
-- `deferred` (cancelled meanwhile) is skipped.
local function release_children(k_task, id, state, now, maxlen, ttl, todo)
  local base = base_of(k_task, id)
  local marks, remote = {'kids'}, {}
  for _, f in ipairs(redis.call('HKEYS', k_task)) do
    local kind = string.sub(f, 1, 2)
    if kind == 'd:' or kind == 'x:' then marks[#marks + 1] = f end
    if kind == 'x:' then remote[#remote + 1] = {f, redis.call('HGET', k_task, f)} end
  end
  for i = 1, #marks, 1000 do  -- marks go first (unpack takes a few thousand values at most)
    redis.call('HDEL', k_task, unpack(marks, i, math.min(i + 999, #marks)))
  end
  for i = 2, #marks do
    local cid = string.sub(marks[i], 3)
    if string.sub(marks[i], 1, 2) == 'd:' then
      local k_child = base .. 'task:' .. cid
      local rec = redis.call('HMGET', k_child, unpack(CHILD_FIELDS))
      if rec[1] == 'deferred' then
        parent_ended(k_child, cid, base, rec, id, state, now, maxlen, ttl, todo)
      end
    end
  end
  for _, mark in ipairs(remote) do
    redis.call('XADD', base .. 'callbacks', '*', 'relay', mark[2], 'child', string.sub(mark[1], 3),
      'id', id, 'status', state, 'ttl', ttl)
  end
end

-- The states of a task that waits to start (issue 15: those an expiry applies to).
local WAITING = {queued = true, scheduled = true, retrying = true, deferred = true}

-- Issue 15: a task that holds a dedup_key in `active` or `debounce` mode (its record's `dk`)
-- lets go of it once terminal, unless the key already names another task. The index is its
-- queue's `dedup` hash, beside its record (same hash tag).
local function release_dedup(k_task, id, key)
  local k_dedup = base_of(k_task, id) .. 'dedup'
  if redis.call('HGET', k_dedup, key) == id then redis.call('HDEL', k_dedup, key) end
end

-- Every terminal state (completed, failed, cancelled, expired) of a legacy task passes here,
-- after its record was updated (`ttl`: the expiry it got): the one place where finishing a
-- task has consequences beyond it. Iterative, so a cascade through dependants needs no
-- recursion. A task of a named queue also enters the queue's `expiring` zset (when its
-- record expires), from which the housekeeping drops its pointer in the id directory
-- (admin.py); not a partition's task (no pointer). Tasks without callbacks, dependants, a dedup_key or a named queue cost one HMGET.
local function finished(k_task, id, state, now, maxlen, ttl)
  local todo = {{k_task, id, state}}
  local i = 1
  while i <= #todo do
    local k, tid, st = todo[i][1], todo[i][2], todo[i][3]
    local marks = redis.call('HMGET', k, 'cb', 'kids', 'q', 'dk')
    if marks[1] then notify_callback(k, tid, st, now, maxlen) end
    if marks[2] then release_children(k, tid, st, now, maxlen, ttl, todo) end
    if marks[4] then release_dedup(k, tid, marks[4]) end
    -- (a partition's routing name, `<q>#i`: no pointer to drop, engine/partitions.py)
    if marks[3] and marks[3] ~= '' and not string.find(marks[3], '#', 1, true) then
      redis.call('ZADD', base_of(k, tid) .. 'expiring', now + tonumber(ttl) * 1000, tid)
    end
    i = i + 1
  end
end

-- Issue 15: a waiting task (queued, scheduled, retrying, deferred) whose expiry came before
-- it started becomes `expired`: terminal, not run, not dead-lettered, counted
-- (`total:expired`), its dependants handled as a cancelled parent's (finished()). `Q`: its
-- queue's keys {stream = {prio -> key}, holes = {prio -> key}, scheduled, counters, events,
-- expiries, fair (fair_keys)}; `rec`: its state, prio, entry, seq, attempts, tenant (nil:
-- `default`); `group`: given when the entry was just read by the group (a claim met it), so
-- it is acked rather than left as a hole.
local function expire(k_task, id, rec, Q, now, maxlen, ttl, group)
  local state, prio = rec[1], rec[2]
  if state == 'queued' and rec[6] then  -- a tenant's task (fair share): rec[6] its tenant
    local k_stream = Q.fair.stream[prio]
    redis.call('XACK', k_stream, FAIR_GROUP, rec[3])  -- parked, or just claimed
    redis.call('XDEL', k_stream, rec[3])
    local F = fair_fns()
    F.tidy(k_stream)
    if redis.call('ZREM', Q.fair.waiting[prio], F.member(rec[6], tonumber(rec[4]), id)) == 1 then
      redis.call('HINCRBY', Q.counters, 'tq:' .. prio, -1)
    end
  elseif state == 'queued' then
    if group then
      redis.call('XACK', Q.stream[prio], group, rec[3])
    else
      redis.call('ZADD', Q.holes[prio], rec[4], id)
    end
    redis.call('XDEL', Q.stream[prio], rec[3])
  elseif state == 'scheduled' or state == 'retrying' then
    redis.call('ZREM', Q.scheduled, id)
    redis.call('HINCRBY', Q.counters, state .. ':' .. prio, -1)
  elseif state == 'deferred' then
    redis.call('HINCRBY', Q.counters, 'deferred:' .. prio, -1)
    redis.call('ZREM', string.sub(Q.counters, 1, -9) .. 'deferred', id)  -- <queue>deferred
    redis.call('HDEL', k_task, 'waiting')
    leave_parents(k_task, id)
  end
  if state == 'queued' then keep_created(k_task, rec[3]) end
  redis.call('HSET', k_task, 'state', 'expired', 'finished', now,
    'error', 'expired before it started')
  redis.call('HDEL', k_task, 'payload', 'run_at', 'entry')
  redis.call('EXPIRE', k_task, ttl)
  redis.call('ZREM', Q.expiries, id)
  redis.call('HINCRBY', Q.counters, 'total:expired', 1)
  answer_numbered(k_task, id, nil, maxlen)
  event(Q.events, maxlen, id, 'expired', rec[5] or '0')
  finished(k_task, id, 'expired', now, maxlen, ttl)
end


-- Put a task into the dead-letter queue: terminal `failed`, record kept FAILURE_TTL.
-- The DLQ index (eval_id -> DLQ entry id) makes retry and delete by eval_id O(1).
local function bury(k_task, k_dlq, k_dlq_index, k_events, k_counters, maxlen, id, prio, payload,
                    err, detail, attempts, now, ttl, result_json, answer)
  local old = redis.call('HGET', k_dlq_index, id)
  if old then redis.call('XDEL', k_dlq, old) end
  local dead = {'id', id, 'prio', prio, 'error', err, 'detail', detail, 'attempts', attempts,
    'failed_at', now, 'payload', payload}
  -- the callback mark (and the tenant) travel with the dead letter, so a re-drive keeps
  -- them even after the record expired (FAILURE_TTL is shorter than DLQ_MAX_AGE_DAYS)
  local marks = redis.call('HMGET', k_task, 'cb', 'tenant', 'created', 'entry')
  if marks[1] then dead[#dead + 1], dead[#dead + 2] = 'cb', marks[1] end
  if marks[2] then dead[#dead + 1], dead[#dead + 2] = 'tenant', marks[2] end
  local dlq_id = redis.call('XADD', k_dlq, '*', unpack(dead))
  redis.call('HSET', k_dlq_index, id, dlq_id)
  if not marks[3] then keep_created(k_task, marks[4]) end  -- (lost while queued)
  redis.call('HSET', k_task, 'state', 'failed', 'error', err, 'finished', now, 'dlq', dlq_id)
  redis.call('HDEL', k_task, 'payload', 'run_at', 'entry')
  redis.call('EXPIRE', k_task, ttl)
  redis.call('HINCRBY', k_counters, 'total:failed', 1)
  redis.call('PUBLISH', 'evaluation:failed',
    '{"eval_id":' .. cjson.encode(id) .. ',"result":' .. result_json .. '}')
  answer_numbered(k_task, id, answer, maxlen, err)
  event(k_events, maxlen, id, 'failed', attempts)
  finished(k_task, id, 'failed', now, maxlen, ttl)
end


-- Issue 11: a task whose stream entry vanished under it (an operator's XDEL or XTRIM, a
-- MAXLEN trim, a replica that lost the tail). While queued or processing its payload lived
-- only in that entry, so it cannot run again: it is dead-lettered with the reason and
-- counted (`total:lost`). `q`: the queue's keys {dlq, dlq index, events, counters};
-- `last`: the error of the attempt that ended, if any. Returns the reason, which the
-- scripts hand back so Python logs one line per task.
local function lose(k_task, id, prio, entry, state, q, maxlen, now, ttl, attempts, last)
  local err = 'stream entry lost: ' .. (entry or '?') .. ' (' .. (prio or '?') ..
    ') was deleted while the task was ' .. state .. ', and its payload lived only there'
  if last and last ~= '' then err = err .. '; last error: ' .. last end
  redis.call('HINCRBY', q[4], 'total:lost', 1)
  bury(k_task, q[1], q[2], q[3], q[4], maxlen, id, prio or 'default', '', err, '',
    attempts or '0', now, ttl, cjson.encode({status = 'failed', output = err, exit_code = cjson.null}))
  return err
end

-- Issue 11: a processing task that no holder can settle and no claim can take over (its
-- lease is gone, or its entry left the group's pending list) while its entry still holds
-- the payload: queued again under a new entry at the back of its priority. A holder still
-- running it is fenced off (the entry changed). The old entry was delivered (its sequence
-- number is at or below `head`), so no hole is needed. A tenant's task (`tenant`; its entry
-- is in `k_stream`, the tenant stream) waits in the fair-share structures `fair` again.
local function requeue(k_task, k_stream, k_counters, k_leases, k_events, group, id, prio, entry,
                       payload, maxlen, fair, tenant)
  redis.call('XACK', k_stream, group, entry)
  redis.call('XDEL', k_stream, entry)
  redis.call('ZREM', k_leases, id)
  push(k_task, k_stream, k_counters, id, prio, payload, nil, fair, tenant)
  event(k_events, maxlen, id, 'queued')
end
