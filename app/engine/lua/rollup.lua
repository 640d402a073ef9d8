-- Roll one finished hour of per-minute state counters up into an hourly hash, for the
-- history kept longer than the minutes (engine/history.py). The per-minute hashes
-- (`<events>:m:<epoch minute>`, written by event() in _lib.lua, kept 48 h) are summed
-- field by field into `<events>:h:<epoch hour>` (kept ARGV[2] s); the hour hash is
-- rewritten whole, so rolling an hour again gives the same hash. An hour without any
-- state change leaves no hash. The marker remembers the last hour rolled, so the hourly
-- housekeeping rolls each hour once (an idle queue too: one small key).
-- KEYS: 1 the hour's hash, 2 the marker (last hour rolled), 3..62 the hour's 60 minute
--       hashes, oldest first
-- ARGV: 1 epoch hour, 2 ttl s of the hour hash and the marker
-- Returns the number of state changes in that hour.
local sums, total = {}, 0
for i = 3, #KEYS do
  local row = redis.call('HGETALL', KEYS[i])
  for j = 1, #row, 2 do
    local n = tonumber(row[j + 1])
    sums[row[j]] = (sums[row[j]] or 0) + n
    total = total + n
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
