-- Read-only: the oldest waiting (queued, not yet delivered) entry of each priority stream,
-- for `taskstream_oldest_waiting_seconds` and the dashboard. It is the first entry after
-- the consumer group's last-delivered-id: entries before it were handed out, and an entry
-- cancelled while queued is deleted (cancel.lua), so the first one left is still waiting.
-- An entry id's first part is the Redis time of its XADD, when the task began to wait (a
-- scheduled or retrying task: when it was promoted into the stream). O(log n) per stream.
-- KEYS: 1 stream:high, 2 stream:default, 3 stream:low
-- ARGV: 1 group
-- Returns {now ms, {entry id, eval_id} or {} per priority, in KEYS order}
local out = {now_ms()}
for i = 1, 3 do
  local start = '-'
  if redis.call('EXISTS', KEYS[i]) == 1 then
    for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[i])) do
      local info = to_map(group)
      if info['name'] == ARGV[1] then start = '(' .. info['last-delivered-id'] end
    end
  end
  local first = redis.call('XRANGE', KEYS[i], start, '+', 'COUNT', 1)
  if #first == 0 then
    out[#out + 1] = {}
  else
    out[#out + 1] = {first[1][1], to_map(first[1][2])['id'] or ''}
  end
end
return out
