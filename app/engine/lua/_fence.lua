-- The fence's verdict on what a record says (state, entry, attempts first), before the
-- lease is looked at: nil when the caller may hold it. complete_batch.lua reads the records
-- and leases of a batch itself and asks the same questions through these two functions.
local function holder_refusal(rec, entry, attempt)
  if not rec[1] then return {'missing'} end
  if rec[1] ~= 'processing' then return {'state', rec[1]} end
  if (entry ~= '' and entry ~= rec[2]) or (attempt ~= '' and attempt ~= rec[3]) then
    return {'stale', rec[1]}
  end
  return nil
end

-- The verdict on the lease deadline (ZSCORE of the leases; nil: none).
local function lease_refusal(rec, deadline, now)
  if not deadline or tonumber(deadline) < now then return {'expired', rec[1]} end
  return nil
end

-- Fencing, shared by complete / fail / renew: is the caller still the holder of this
-- delivery? entry and attempt '' mean "whoever holds it" (legacy pull workers that do
-- not send their token); an expired lease is lost even before another consumer claims it.
-- Returns nil when the caller holds the task, else the reason as a status reply; and the
-- record's state, entry, attempts, prio, exp (its expiry, issue 15), tenant (nil: `default`,
-- its entry is in the priority stream; else in the tenant stream of that priority).
local function fence(k_task, k_leases, id, entry, attempt, now)
  local rec = redis.call('HMGET', k_task, 'state', 'entry', 'attempts', 'prio', 'exp', 'tenant')
  rec[4] = rec[4] or 'default'  -- (absent while queued: push in _lib.lua)
  local refusal = holder_refusal(rec, entry, attempt)
  if refusal then return refusal, rec end
  return lease_refusal(rec, redis.call('ZSCORE', k_leases, id), now), rec
end
