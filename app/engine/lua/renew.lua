-- Renew the leases of the tasks a consumer is running (or release them: lease ms 0).
-- Fenced per task; XCLAIM ... JUSTID resets the entry's idle time so XPENDING and
-- XINFO CONSUMERS show live holders, without bumping the delivery counter.
-- KEYS: 1 stream:high, 2 stream:default, 3 stream:low, 4 leases, 5-7 tenant streams
--       high/default/low (a tenant's task's entry), 8… the tasks' hashes (as the eval_ids
--       below)
-- ARGV: 1 group, 2 consumer, 3 lease ms, 4 task key prefix, 5 wake channel,
--       then (eval_id, entry, attempt)...
-- A release (lease 0) is announced on the wake channel, so idle consumers elsewhere take
-- the tasks over at once instead of at their next poll.
-- Returns the eval_ids this consumer no longer holds.
local STREAM = {high = KEYS[1], default = KEYS[2], low = KEYS[3]}
local TENANTS = {high = KEYS[5], default = KEYS[6], low = KEYS[7]}
local now = now_ms()
local lost = {}
for i = 6, #ARGV, 3 do
  local id = ARGV[i]
  local refused, rec = fence(ARGV[4] .. id, KEYS[4], id, ARGV[i + 1], ARGV[i + 2], now)
  local claimed = refused or redis.pcall('XCLAIM', (rec[6] and TENANTS or STREAM)[rec[4]],
    ARGV[1], ARGV[2], 0, rec[2], 'JUSTID')
  if refused or claimed.err then
    lost[#lost + 1] = id
  else
    redis.call('ZADD', KEYS[4], now + tonumber(ARGV[3]), id)
  end
end
if tonumber(ARGV[3]) == 0 and #ARGV > 5 then redis.call(QUEUE_PUBLISH, ARGV[5], 'release') end
return lost
