-- Read PAI-EAS items by index: a range read (nothing is delivered or leased), optionally
-- deleting what it returns (`_auto_delete_`). Items are in index order across priorities.
-- KEYS: 1 index zset, 2 rid hash, 3 stream:high, 4 stream:default, 5 stream:low, then
--       what an auto-delete touches (eas_drop in _eas.lua: holes ×3, scheduled, counters,
--       leases, events, aliases, stats)
-- ARGV: 1 key prefix, 2 from index, 3 length, 4 most items examined, 5 auto delete '1'/'0',
--       6 events maxlen, 7 group, 8 requestId ('' for none), 9 '1' when a requestId is the
--       index itself (input queues; in sinks, items put without one), 10 result ttl s, then tag filter key/value pairs
-- Returns {{{index, payload}...}, {stream tails} when nothing was found}
local prefix, length = ARGV[1], tonumber(ARGV[3])
local candidates
if ARGV[8] ~= '' then
  -- an item put without a requestId tag is known by its index
  local id = ARGV[9] ~= '1' and redis.call('HGET', KEYS[2], ARGV[8])
  if not id and string.match(ARGV[8], '^%d+$')
      and (ARGV[9] == '1' or not redis.call('HGET', prefix .. 'task:' .. ARGV[8], 'rid')) then
    id = ARGV[8]
  end
  candidates = id and redis.call('ZSCORE', KEYS[1], id) and {id} or {}
else
  candidates = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[2], '+inf', 'LIMIT', 0, ARGV[4])
end

local function payload_of(id)
  local k_task = prefix .. 'task:' .. id
  local rec = redis.call('HMGET', k_task, 'entry', 'prio', 'payload')
  if rec[3] then return eas_payload(k_task, rec[3]) end
  if rec[1] then  -- (`prio` absent while queued: push in _lib.lua)
    return eas_payload(k_task, entry_payload(prefix .. 'stream:' .. (rec[2] or 'default'), rec[1]))
  end
  return nil
end

local function matches(payload)
  if #ARGV < 11 then return true end
  local nl = string.find(payload, '\n', 1, true)
  local ok, head = pcall(cjson.decode, string.sub(payload, 1, (nl or 1) - 1))
  local tags = ok and type(head) == 'table' and head['tags'] or {}
  for i = 11, #ARGV, 2 do
    if tags[ARGV[i]] ~= ARGV[i + 1] then return false end
  end
  return true
end

local out = {}
local now = now_ms()
for _, id in ipairs(candidates) do
  if #out >= length then break end
  local payload = payload_of(id)
  if payload and matches(payload) then
    out[#out + 1] = {id, payload}
    if ARGV[5] == '1' then eas_drop(prefix, id, false, now, ARGV[6], ARGV[10], ARGV[7]) end
  end
end
local tails = {}
if #out == 0 then
  for i = 3, 5 do
    local last = redis.call('XREVRANGE', KEYS[i], '+', '-', 'COUNT', 1)
    tails[#tails + 1] = last[1] and last[1][1] or '0-0'
  end
end
return {out, tails}
