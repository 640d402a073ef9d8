-- fsck (issue 11): check a batch of members of one `deps:<parent>` set (the deferred tasks
-- that finishing the parent releases) against the records, atomically; with repair, remove
-- members that are not deferred tasks waiting on this parent, and settle a deferred member
-- of a finished parent's set (which finishing it should have deleted).
-- Class: deps_orphan
-- KEYS: 1 the deps:<parent> set
-- ARGV: 1 repair ('1'/'0'), 2 the parent's eval_id, 3 task key prefix, 4 events maxlen,
--       5 result ttl s, 6… member eval_ids
-- Also touched, derived from the task key prefix (same hash tag): the parent's and the
-- members' records, and what settle_deferred (_fsck.lua) touches.
-- Returns the findings (see _fsck.lua).
local parent, prefix = ARGV[2], ARGV[3]
local now = now_ms()
local pstate = redis.call('HGET', prefix .. parent, 'state')
local parent_live = pstate and not TERMINAL[pstate]

local function lists(deps)
  for _, p in ipairs(cjson.decode(deps or '[]')) do
    if p == parent then return true end
  end
  return false
end

for i = 6, #ARGV do
  local cid = ARGV[i]
  if redis.call('SISMEMBER', KEYS[1], cid) == 1 then
    local rec = redis.call('HMGET', prefix .. cid, 'state', 'deps')
    local why
    if not parent_live then
      why = 'the parent is ' .. (pstate or 'gone') .. ', so nothing will read this set'
    elseif not rec[1] then
      why = 'no record'
    elseif rec[1] ~= 'deferred' then
      why = 'the task is ' .. rec[1]
    elseif not lists(rec[2]) then
      why = 'the task does not depend on ' .. parent
    end
    if why then
      local action = 'removed'
      if REPAIR then redis.call('SREM', KEYS[1], cid) end
      if rec[1] == 'deferred' then
        local _, settled = settle_deferred(prefix .. cid, cid, now, ARGV[4], ARGV[5])
        if settled then action = action .. '; the task was ' .. settled end
      end
      report(cid, 'deps_orphan', why, action, 1)
    end
  end
end
return findings
