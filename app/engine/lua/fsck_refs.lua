-- fsck (issue 11): check a batch of members of a queue's leases or schedule zset against
-- the task records, atomically; with repair, remove members no live task needs.
-- Classes: lease_orphan (a lease of a task that is not processing in this queue),
--   schedule_orphan (a schedule member that is not a scheduled or retrying task of it),
--   expiry_orphan (an `expiries` member that is not a waiting task of it, issue 15).
-- KEYS: 1 the zset (leases, scheduled or expiries), 2… the members' task hashes (as the
--       eval_ids)
-- ARGV: 1 repair ('1'/'0'), 2 kind ('leases' | 'scheduled' | 'expiries'), 3 task key
--       prefix, 4 the queue assumed ('' = default), 5… eval_ids
-- Returns the findings (see _fsck.lua).
local STATES = {leases = {processing = true}, scheduled = {scheduled = true, retrying = true},
  expiries = WAITING}
local CLASS = {leases = 'lease_orphan', scheduled = 'schedule_orphan', expiries = 'expiry_orphan'}
local wanted, class = STATES[ARGV[2]], CLASS[ARGV[2]]
for i = 5, #ARGV do
  local id = ARGV[i]
  if redis.call('ZSCORE', KEYS[1], id) then
    local rec = redis.call('HMGET', ARGV[3] .. id, 'state', 'q')
    local why
    if not rec[1] then
      why = 'no record'
    elseif (rec[2] or '') ~= ARGV[4] then
      why = 'a task of queue ' .. rec[2]
    elseif not wanted[rec[1]] then
      why = 'the task is ' .. rec[1]
    end
    if why then
      if REPAIR then redis.call('ZREM', KEYS[1], id) end
      report(id, class, why, 'removed', 1)
    end
  end
end
return findings
