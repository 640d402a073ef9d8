-- fsck (issue 11): check a batch of task records of one queue against the queue's
-- structures, atomically; with repair, fix each record that would otherwise stay stuck.
-- Classes: queued_without_entry, queued_not_waiting, processing_without_entry,
--   processing_without_lease, processing_not_pending, schedule_missing, deferred_stuck,
--   eas_index_missing, expiry_missing (a waiting task with an expiry, missing from
--   `expiries`; issue 15), deps_orphan (docs/operations.md, *fsck*, says what each means
--   and what the repair does).
-- KEYS: 1-3 stream:high/default/low, 4 counters, 5 leases, 6 scheduled, 7 dlq, 8 dlq index,
--       9-11 holes:high/default/low, 12 events, 13 expiries, 14-22 fair share
--       (keys.QueueKeys.fair), then one task hash per eval_id below, then the queue's
--       effects (engine/keys.py: what finished() may touch)
-- ARGV: 1 repair ('1'/'0'), 2 group, 3 the queue assumed ('' = the default queue),
--       4 events maxlen, 5 failure ttl s, 6 result ttl s, 7 schedule channel,
--       8… the eval_ids (ARGV[7 + i] is the eval_id of KEYS[22 + i])
-- Also touched: records of this queue (parents and dependants of the records checked, a
-- numbered queue item's index zset: its `ix`, an effects key).
-- Records that are not tasks of this queue (the id directory's pointers, in the default
-- queue's key space) are skipped.
-- Returns {findings (see _fsck.lua)}
local STREAM = {high = KEYS[1], default = KEYS[2], low = KEYS[3]}
local HOLES = {high = KEYS[9], default = KEYS[10], low = KEYS[11]}
local FAIR = fair_keys(KEYS, 14)
local QK = {KEYS[7], KEYS[8], KEYS[12], KEYS[4]}  -- dlq, dlq index, events, counters
local group, maxlen, failure_ttl = ARGV[2], ARGV[4], ARGV[5]
local now = now_ms()
local LOST = 'dead-lettered as lost (the payload lived only in the entry)'
local HOLDER = 'none while its lease is live: its holder may still settle it'

local function gone(prio, entry)
  return 'stream entry ' .. (entry or '(none)') .. ' of ' .. (prio or '?') .. ' is gone'
end

-- A tenant's queued task: its entry in its tenant stream and its member in the waiting order.
local function check_queued_tenant(k_task, id, rec)
  local prio, entry, tenant = rec[2], rec[3], rec[11]
  local k_stream, k_wait = FAIR.stream[prio], FAIR.waiting[prio]
  local member = fair_fns().member(tenant, tonumber(rec[7] or '0'), id)
  local listed = k_wait and redis.call('ZSCORE', k_wait, member)
  if entry and k_stream and entry_fields(k_stream, entry) then
    if listed and redis.call('ZSCORE', FAIR.vtime[prio], tenant) then return end
    if listed then  -- its tenant has no virtual time: no claim would ever pick it
      if REPAIR then fair_fns().join(FAIR.vtime[prio], tenant) end
      return report(id, 'queued_not_waiting', 'tenant ' .. tenant .. ' has no virtual time',
        'its tenant joined again', 1)
    end
    if REPAIR then
      redis.call('ZADD', k_wait, 0, member)
      redis.call('HINCRBY', KEYS[4], 'tq:' .. prio, 1)
      fair_fns().join(FAIR.vtime[prio], tenant)
    end
    return report(id, 'queued_not_waiting', 'not in the waiting order of tenant ' .. tenant,
      'listed again', 1)
  end
  if REPAIR then
    if listed then
      redis.call('ZREM', k_wait, member)
      redis.call('HINCRBY', KEYS[4], 'tq:' .. prio, -1)
    end
    lose(k_task, id, prio, entry, 'queued', QK, maxlen, now, failure_ttl, rec[4])
  end
  report(id, 'queued_without_entry', gone(prio, entry), LOST, 1)
end

local function check_queued(k_task, id, rec)
  local prio, entry = rec[2], rec[3]
  if rec[11] then return check_queued_tenant(k_task, id, rec) end
  if entry and STREAM[prio] and entry_fields(STREAM[prio], entry) then return end
  if REPAIR then
    -- its sequence number still counts as queued: a hole keeps positions and counts exact
    local head = tonumber(redis.call('HGET', KEYS[4], 'head:' .. (prio or '')) or '0')
    if HOLES[prio] and tonumber(rec[7] or '0') > head then
      redis.call('ZADD', HOLES[prio], rec[7], entry or id)
    end
    lose(k_task, id, prio, entry, 'queued', QK, maxlen, now, failure_ttl, rec[4])
  end
  report(id, 'queued_without_entry', gone(prio, entry), LOST, 1)
end

local function check_processing(k_task, id, rec)
  local prio, entry = rec[2], rec[3]
  local k_stream = (rec[11] and FAIR.stream or STREAM)[prio] or KEYS[2]
  local fields = entry and entry_fields(k_stream, entry)
  local deadline = redis.call('ZSCORE', KEYS[5], id)
  local live = deadline and tonumber(deadline) >= now
  if not fields then
    if live and entry then
      return report(id, 'processing_without_entry', gone(prio, entry), HOLDER, 0)
    end
    if REPAIR then
      if entry then redis.call('XACK', k_stream, group, entry) end
      redis.call('ZREM', KEYS[5], id)
      lose(k_task, id, prio, entry, 'processing', QK, maxlen, now, failure_ttl, rec[4])
    end
    return report(id, 'processing_without_entry', gone(prio, entry), LOST, 1)
  end
  if not deadline then
    if REPAIR then
      requeue(k_task, k_stream, KEYS[4], KEYS[5], KEYS[12], group, id, prio, entry,
        fields['payload'] or '', maxlen, FAIR, rec[11])
    end
    return report(id, 'processing_without_lease',
      'no lease: nobody can settle it and no claim takes it over', 're-queued', 1)
  end
  if is_pending(k_stream, group, entry) == false then
    local detail = 'entry ' .. entry .. ' is not in the pending list of group ' .. group
    if live then return report(id, 'processing_not_pending', detail, HOLDER, 0) end
    if REPAIR then
      requeue(k_task, k_stream, KEYS[4], KEYS[5], KEYS[12], group, id, prio, entry,
        fields['payload'] or '', maxlen, FAIR, rec[11])
    end
    report(id, 'processing_not_pending', detail, 're-queued', 1)
  end
end

local function check_scheduled(id, rec)
  if redis.call('ZSCORE', KEYS[6], id) then return end
  local due = tonumber(rec[6] or '0')
  if due == 0 then due = now end
  if REPAIR then schedule(KEYS[6], ARGV[7], id, due) end
  report(id, 'schedule_missing', rec[1] .. ' but not in the schedule (due at ' .. due .. ' ms)',
    're-scheduled at its due time', 1)
end

-- An item of a numbered queue still in its queue must be in the queue's index zset (index reads,
-- `_attrs_` and truncation look only there).
local function check_index(k_task, id, ix)
  local state = redis.call('HGET', k_task, 'state')
  if not state or TERMINAL[state] or redis.call('ZSCORE', ix, id) then return end
  if REPAIR then redis.call('ZADD', ix, tonumber(id) or 0, id) end
  report(id, 'eas_index_missing', state .. ' but not in the index ' .. ix, 'indexed', 1)
end

-- A waiting task with an expiry must be in `expiries`: only the sweep of that zset expires a
-- task no claim meets (paused, deferred, scheduled far ahead).
local function check_expiry(id, state, exp)
  if not WAITING[state] or redis.call('ZSCORE', KEYS[13], id) then return end
  if REPAIR then redis.call('ZADD', KEYS[13], exp, id) end
  report(id, 'expiry_missing', state .. ' with an expiry (' .. exp .. ' ms) but not in expiries',
    'added at its expiry', 1)
end

-- A parent's marks of dependants of its queue (`d:<id>`): each must name a deferred task
-- that lists it among its parents, else it is dropped; a finished parent has none left
-- (finishing consumes them), so any it has are settled now as its end would have
-- (dependants released or cancelled, relays appended). Marks of other queues' dependants
-- (`x:`) are not judged here: their relays are.
local function check_dependants(k_task, id, state)
  if TERMINAL[state] then
    if REPAIR then
      local todo = {}
      release_children(k_task, id, state, now, maxlen, ARGV[6], todo)
      for _, t in ipairs(todo) do finished(t[1], t[2], t[3], now, maxlen, ARGV[6]) end
    end
    return report(id, 'deps_orphan', 'a ' .. state .. ' task still marks dependants',
      'settled them as its end would have', 1)
  end
  for _, f in ipairs(redis.call('HKEYS', k_task)) do
    if string.sub(f, 1, 2) == 'd:' then
      local cid = string.sub(f, 3)
      local child = redis.call('HMGET', base_of(k_task, id) .. 'task:' .. cid, 'state', 'deps')
      local why
      if not child[1] then
        why = 'no record'
      elseif child[1] ~= 'deferred' then
        why = 'the task is ' .. child[1]
      elseif not string.find(child[2] or '', cjson.encode(id), 1, true) then
        why = 'the task does not depend on ' .. id
      end
      if why then
        if REPAIR and redis.call('HDEL', k_task, f) == 1 then drop_kid(k_task) end
        report(cid, 'deps_orphan', 'marked on ' .. id .. ': ' .. why, 'removed', 1)
      end
    end
  end
end

local function check(k_task, id)
  local rec = redis.call('HMGET', k_task, 'state', 'prio', 'entry', 'attempts', 'q', 'run_at',
    'seq', 'ix', 'kids', 'exp', 'tenant')
  if not rec[1] then return end  -- a pointer, or expired or settled and gone since listed
  rec[2] = rec[2] or 'default'  -- (absent while queued: push in _lib.lua)
  if (rec[5] or '') ~= ARGV[3] then return end
  local state = rec[1]
  if state == 'queued' then
    check_queued(k_task, id, rec)
  elseif state == 'processing' then
    check_processing(k_task, id, rec)
  elseif state == 'scheduled' or state == 'retrying' then
    check_scheduled(id, rec)
  elseif state == 'deferred' then
    local detail, action = settle_deferred(k_task, id, now, maxlen, ARGV[6])
    if detail then report(id, 'deferred_stuck', detail, action, 1) end
  end
  if rec[8] then check_index(k_task, id, rec[8]) end
  if rec[9] then check_dependants(k_task, id, state) end
  if rec[10] then check_expiry(id, redis.call('HGET', k_task, 'state'), rec[10]) end
end

for i = 8, #ARGV do check(KEYS[i + 15], ARGV[i]) end
return {findings}
