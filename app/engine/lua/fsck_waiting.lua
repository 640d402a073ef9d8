-- fsck: check a batch of members of a priority's fair-share waiting order
-- (`tenants:<prio>:waiting`, members `<tenant>|<seq>|<eval_id>`, see _lib.lua) against the
-- task records, atomically; with repair, remove members no queued task holds.
-- Class: waiting_orphan (a member naming no task queued at that priority under that tenant
--   and number: claims would skip it, but it counts in positions and `tq:<prio>`).
-- KEYS: 1 the waiting zset, 2 counters
-- ARGV: 1 repair ('1'/'0'), 2 task key prefix, 3 the queue assumed ('' = default),
--       4 priority, 5… members
-- Also touched, derived from the task key prefix (same hash tag): the members' records.
-- Returns the findings (see _fsck.lua).
local function why_orphan(member)
  local tenant, seq, id = string.match(member, '^([^|]*)|(%d+)|(.+)$')
  if not id then return 'not a <tenant>|<seq>|<eval_id> member' end
  local rec = redis.call('HMGET', ARGV[2] .. id, 'state', 'q', 'tenant', 'seq', 'prio')
  if not rec[1] then return 'no record' end
  if (rec[2] or '') ~= ARGV[3] then return 'a task of queue ' .. rec[2] end
  if rec[1] ~= 'queued' then return 'the task is ' .. rec[1] end
  local prio = rec[5] or 'default'  -- (absent while queued: push in _lib.lua)
  if rec[3] ~= tenant or tonumber(rec[4] or '-1') ~= tonumber(seq) or prio ~= ARGV[4] then
    return 'the task waits as ' .. fair_fns().member(rec[3] or 'default', tonumber(rec[4] or '0'), id) ..
      ' (' .. (rec[5] or '?') .. ')'
  end
  return nil
end

for i = 5, #ARGV do
  local member = ARGV[i]
  if redis.call('ZSCORE', KEYS[1], member) then
    local why = why_orphan(member)
    if why then
      if REPAIR then
        redis.call('ZREM', KEYS[1], member)
        redis.call('HINCRBY', KEYS[2], 'tq:' .. ARGV[4], -1)
      end
      report(member, 'waiting_orphan', why, 'removed', 1)
    end
  end
end
return findings
