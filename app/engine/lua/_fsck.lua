-- Helpers of the fsck scripts (issue 11), prepended to engine/lua/fsck_*.lua after _lib.lua.
-- Every fsck script takes ARGV[1] = '1' to repair, '0' to only report, re-reads what it
-- judges (the audit runs while consumers work: a candidate that changed since Python
-- listed it is judged as it is now), and returns its findings as
-- {{ref, class, detail, action, fixed (0/1)}...}; `action` is what the repair did, or,
-- with `fixed` 0, why nothing was done; both are '' when only reporting.
local REPAIR = ARGV[1] == '1'
local TERMINAL = {completed = true, failed = true, cancelled = true, expired = true}
local findings = {}

local function report(ref, class, detail, action, fixed)
  if not REPAIR then action, fixed = '', 0 end
  findings[#findings + 1] = {ref, class, detail, action, fixed}
end

-- Is `entry` in the group's pending list? nil when the group itself is missing (the claim
-- script recreates it from 0 and the entry is delivered again).
local function is_pending(k_stream, group, entry)
  local found = redis.pcall('XPENDING', k_stream, group, entry, entry, 1)
  if type(found) == 'table' and found.err then return nil end
  return #found > 0
end

-- Stream ids compared as numbers (ms, then sequence).
local function id_before(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  if tonumber(am) ~= tonumber(bm) then return tonumber(am) < tonumber(bm) end
  return tonumber(as) < tonumber(bs)
end

-- A deferred task that nobody will release: its `waiting` count must equal its unfinished
-- parents of its queue whose records mark it (`d:<id>`) plus its `w:` marks (parents of
-- other queues, listed in `xdeps`: their end arrives by relay, and is trusted here), and
-- no parent of its queue may have failed, been cancelled, have expired or be gone (unless
-- allow_failure), since finishing such a parent would have cancelled it.
-- Returns nil when consistent, else the detail and the repair: re-link it to unfinished
-- parents that lost it and fix `waiting`; release it (queued, or scheduled at its run_at)
-- when no unfinished parent is left; cancel it, with the reason, when a parent failed,
-- was cancelled or is gone. Touches its parents' records (records of its queue) and,
-- when it cancels, what finished() touches.
local function settle_deferred(k_task, id, now, maxlen, ttl)
  local rec = redis.call('HMGET', k_task, 'state', 'prio', 'q', 'allow', 'payload', 'run_at',
    'attempts', 'deps', 'waiting', 'xdeps', 'exp')
  if rec[1] ~= 'deferred' then return nil end
  local base = base_of(k_task, id)
  local linked, unlinked, blocker, blocked_as = 0, {}, nil, nil
  local remote = {}
  for _, pid in ipairs(cjson.decode(rec[10] or '[]')) do
    remote[pid] = true
    if redis.call('HEXISTS', k_task, 'w:' .. pid) == 1 then linked = linked + 1 end
  end
  for _, parent in ipairs(cjson.decode(rec[8] or '[]')) do
    local k_parent = base .. 'task:' .. parent
    local state = not remote[parent] and redis.call('HGET', k_parent, 'state')
    if remote[parent] then  -- luacheck: ignore (counted above)
    elseif not state or state == 'failed' or state == 'cancelled'
      or state == 'expired' then
      if rec[4] ~= '1' and not blocker then
        blocker, blocked_as = parent, state or 'unknown (its record is gone)'
      end
    elseif state ~= 'completed' then
      if redis.call('HEXISTS', k_parent, 'd:' .. id) == 1 then
        linked = linked + 1
      else
        unlinked[#unlinked + 1] = parent
      end
    end
  end
  local waiting = tonumber(rec[9] or '0')
  if not blocker and #unlinked == 0 and waiting == linked then return nil end
  local qp = base
  if blocker then
    if REPAIR then
      cancel_child(k_task, id, qp, rec, blocker, blocked_as, now, maxlen, ttl, rec[11])
      finished(k_task, id, 'cancelled', now, maxlen, ttl)
    end
    return 'dependency ' .. blocker .. ' ' .. blocked_as .. ', yet it is still deferred', 'cancelled'
  end
  local detail = 'waits for ' .. waiting .. ' parent(s), ' .. linked .. ' will release it'
  if #unlinked > 0 then
    detail = 'not marked on unfinished parent(s) ' .. table.concat(unlinked, ', ')
  end
  local left = linked + #unlinked
  if REPAIR then
    for _, parent in ipairs(unlinked) do
      redis.call('HSET', base .. 'task:' .. parent, 'd:' .. id, '')
      redis.call('HINCRBY', base .. 'task:' .. parent, 'kids', 1)
    end
    if left == 0 then
      release_child(k_task, id, qp, rec, now, maxlen, rec[11])
    else
      redis.call('HSET', k_task, 'waiting', left)
    end
  end
  if left == 0 then return detail, 'released (no unfinished parent left)' end
  return detail, 're-linked to its ' .. left .. ' unfinished parent(s)'
end
