-- Fencing, shared by complete / fail / renew: is the caller still the holder of this
-- delivery? entry and attempt '' mean "whoever holds it" (legacy pull workers that do
-- not send their token); an expired lease is lost even before another consumer claims it.
-- Returns nil when the caller holds the task, else the reason as a status reply; and the
-- record's state, entry, attempts, prio, exp (its expiry, issue 15), tenant (nil: `default`,
-- its entry is in the priority stream; else in the tenant stream of that priority).
local function fence(k_task, k_leases, id, entry, attempt, now)
  local rec = redis.call('HMGET', k_task, 'state', 'entry', 'attempts', 'prio', 'exp', 'tenant')
  if not rec[1] then return {'missing'}, rec end
  if rec[1] ~= 'processing' then return {'state', rec[1]}, rec end
  if (entry ~= '' and entry ~= rec[2]) or (attempt ~= '' and attempt ~= rec[3]) then
    return {'stale', rec[1]}, rec
  end
  local deadline = redis.call('ZSCORE', k_leases, id)
  if not deadline or tonumber(deadline) < now then return {'expired', rec[1]}, rec end
  return nil, rec
end
