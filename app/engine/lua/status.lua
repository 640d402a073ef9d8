-- Read a task record and, when queued, its position (1 = next) in strict priority order;
-- at a level where tenants' tasks wait, its expected place under fair share (_fair.lua).
-- KEYS: 1 task hash, 2 counters, 3 holes:high, 4 holes:default, 5 holes:low, 6-14 fair
--       share (keys.QueueKeys.fair)
-- ARGV: 1 the queue assumed ('' = default), 2 TENANT_WEIGHTS ('name=w,…')
-- Returns {flat HGETALL, position or 0}; {} when unknown; {'queue', name} (see wrong_queue).
local rec = redis.call('HGETALL', KEYS[1])
if #rec == 0 then return {} end
local task = to_map(rec)
if (task['q'] or '') ~= (ARGV[1] or '') then return {'queue', task['q'] or ''} end
local position = 0
if task['state'] == 'queued' then
  local seq = tonumber(task['seq'])
  for i, p in ipairs(PRIOS) do
    if p == (task['prio'] or 'default') then  -- (absent while queued: push in _lib.lua)
      local c = redis.call('HMGET', KEYS[2], 'head:' .. p, 'tq:' .. p)
      if tonumber(c[2] or '0') > 0 then  -- tenants' tasks wait here: fair share
        local F = fair_lib()
        local level = F.level(fair_keys(KEYS, 6), KEYS[2], KEYS[2 + i], p)
        position = position + F.place(level, task['tenant'] or 'default', seq,
          F.weights(ARGV[2]))
        break
      end
      local head = tonumber(c[1] or '0')
      local holes = redis.call('ZCOUNT', KEYS[2 + i], '(' .. head, '(' .. seq)
      position = position + seq - head - holes
      break
    end
    position = position + queued_in(KEYS[2], KEYS[2 + i], p)
  end
end
return {rec, position}
