-- Read a queue's cumulative per-priority counters now, with the samples of them kept so far
-- (engine/pace.py computes the pace: starts and arrivals per second per priority), and keep
-- this reading as a new sample when the newest one is at least ARGV[1] ms old. Nothing on a
-- task's path writes here: samples are taken when someone asks for an ETA, at most one per
-- ARGV[1] ms per queue, whichever replica asks.
-- KEYS: 1 counters, 2 pace (list of samples, newest first: '<ms> <head:high> <head:default>
--       <head:low> <seq:high> <seq:default> <seq:low>'; under fair share each head counts
--       the tenants' tasks taken out of their waiting order too, `thead:<prio>`, and each
--       seq their arrivals, `tseq:<prio>`)
-- ARGV: 1 ms between samples, 2 samples kept, 3 ttl ms of the list
-- Returns {this reading (a sample string), {samples before it, newest first}}
local now = now_ms()
local c = redis.call('HMGET', KEYS[1], 'head:high', 'head:default', 'head:low', 'seq:high',
  'seq:default', 'seq:low', 'thead:high', 'thead:default', 'thead:low', 'tseq:high',
  'tseq:default', 'tseq:low')
local reading = tostring(now)
for i = 1, 6 do reading = reading .. ' ' .. (tonumber(c[i] or '0') + tonumber(c[i + 6] or '0')) end
local samples = redis.call('LRANGE', KEYS[2], 0, -1)
local newest = samples[1] and tonumber(string.match(samples[1], '^%d+'))
if not newest or now - newest >= tonumber(ARGV[1]) then
  redis.call('LPUSH', KEYS[2], reading)
  redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[2]) - 1)
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
return {reading, samples}
