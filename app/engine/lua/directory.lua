-- The id directory (engine/keys.py): before a task is stored in a named queue, its eval_id
-- is claimed in the deployment's home tag, where the default queue keeps its records: a
-- pointer `{q: <queue>, at: <ms>}` at the default queue's record key of that id, so eval_ids
-- stay unique across queues and a by-id call finds the task's queue in one read. The queue
-- joins the registry of named queues here too. Its parents (depends_on) are located in
-- the same step: a record of the default queue, or a pointer naming their queue.
-- Every check comes before any write.
-- KEYS: 1 the id's key in the directory, 2 the registry of named queues, 3… the parents'
--       keys in the directory (as ARGV 3…)
-- ARGV: 1 the named queue, 2… the parents' eval_ids (ARGV[i - 1] is the eval_id of KEYS[i])
-- Returns {'ok', created (1: the pointer is new, 0: it named this queue already), at,
-- {queue of each parent: '' the default queue, else its name}} | {'duplicate', queue, at}
-- ('' and '' for a task of the default queue) | {'unknown', {ids}}
local rec = redis.call('HMGET', KEYS[1], 'state', 'q', 'at')
if rec[1] then return {'duplicate', '', ''} end
if rec[2] and rec[2] ~= ARGV[1] then return {'duplicate', rec[2], rec[3] or ''} end
local where, unknown = {}, {}
for i = 3, #KEYS do
  local parent = redis.call('HMGET', KEYS[i], 'state', 'q')
  if parent[1] then
    where[#where + 1] = ''
  elseif parent[2] then
    where[#where + 1] = parent[2]
  else
    unknown[#unknown + 1] = ARGV[i - 1]
  end
end
if #unknown > 0 then return {'unknown', unknown} end
local at = now_ms()
redis.call('HSET', KEYS[1], 'q', ARGV[1], 'at', at)
redis.call('SADD', KEYS[2], ARGV[1])
return {'ok', rec[2] and 0 or 1, tostring(at), where}
