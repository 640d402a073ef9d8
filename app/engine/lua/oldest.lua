-- Read-only: the oldest waiting (queued, not yet delivered) entry of each priority stream,
-- for `taskstream_oldest_waiting_seconds` and the dashboard. It is the first entry after
-- the consumer group's last-delivered-id: entries before it were handed out, and an entry
-- cancelled while queued is deleted (cancel.lua), so the first one left is still waiting.
-- An entry id's first part is the Redis time of its XADD, when the task began to wait (a
-- scheduled or retrying task: when it was promoted into the stream). O(log n) per stream.
-- Fair share: the tasks of tenants wait in the tenant stream of their priority, parked with
-- the pseudo-consumer `~waiting` (_lib.lua); its first pending entry is the oldest of them.
-- KEYS: 1 stream:high, 2 stream:default, 3 stream:low, 4-6 the tenant streams (optional)
-- ARGV: 1 group
-- Returns {now ms, {entry id, eval_id} or {} per priority, in KEYS order}
local out = {now_ms()}

local function entry_ms(entry)
  return tonumber(string.match(entry, '^%d+'))
end

-- The oldest waiting task of the tenants at one priority, or nil.
local function oldest_parked(k_stream)
  if not k_stream then return nil end
  local got = redis.pcall('XPENDING', k_stream, ARGV[1], '-', '+', 1, PARKED)
  if type(got) ~= 'table' or got.err or #got == 0 then return nil end
  local fields = entry_fields(k_stream, got[1][1])
  return {got[1][1], fields and fields['id'] or ''}
end

for i = 1, 3 do
  local start = '-'
  if redis.call('EXISTS', KEYS[i]) == 1 then
    for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[i])) do
      local info = to_map(group)
      if info['name'] == ARGV[1] then start = '(' .. info['last-delivered-id'] end
    end
  end
  local first = redis.call('XRANGE', KEYS[i], start, '+', 'COUNT', 1)
  local found = first[1] and {first[1][1], to_map(first[1][2])['id'] or ''}
  local parked = oldest_parked(KEYS[3 + i])
  if parked and (not found or entry_ms(parked[1]) < entry_ms(found[1])) then found = parked end
  out[#out + 1] = found or {}
end
return out
