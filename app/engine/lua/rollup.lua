-- Roll one finished hour of per-minute state counts up into an hourly hash, for the
-- history kept longer than the minutes (engine/history.py). The queue's `stats` hash
-- (`<epoch minute>:<state>` fields, written by event() in _lib.lua, kept 48 h) is read for
-- the hour's 60 minutes and summed per state into `<events>:h:<epoch hour>` (kept ARGV[2]
-- s); the hour hash is rewritten whole, so rolling an hour again gives the same hash. An
-- hour without any state change leaves no hash. The marker remembers the last hour
-- rolled, so the hourly housekeeping rolls each hour once (an idle queue too: one key).
-- KEYS: 1 the hour's hash, 2 the marker (last hour rolled), 3 the queue's stats hash
-- ARGV: 1 epoch hour, 2 ttl s of the hour hash and the marker
-- Returns the number of state changes in that hour.
local sums, total = {}, 0
local first = tonumber(ARGV[1]) * 60
local fields = {}
for m = first, first + 59 do
  for _, st in ipairs(STATS_STATES) do fields[#fields + 1] = m .. ':' .. st end
end
local counts = redis.call('HMGET', KEYS[3], unpack(fields))
for i, n in ipairs(counts) do
  if n then
    local state = STATS_STATES[(i - 1) % #STATS_STATES + 1]
    sums[state] = (sums[state] or 0) + tonumber(n)
    total = total + tonumber(n)
  end
end
redis.call('DEL', KEYS[1])
if total > 0 then
  local flat = {}
  for state, n in pairs(sums) do flat[#flat + 1] = state; flat[#flat + 1] = n end
  redis.call('HSET', KEYS[1], unpack(flat))
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
local last = redis.call('GET', KEYS[2])
if tonumber(ARGV[1]) > tonumber(last or '-1') then redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2]) end
return total
