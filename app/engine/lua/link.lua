-- Dependencies across queues (engine/links.py): a task of another queue is linked to its
-- parents in this queue before it is stored (or unlinked when storing it was refused).
-- Linking marks each unfinished parent (`x:<child>` = the child's queue; `kids` counts
-- it): finishing the parent then appends a relay for the child (release_children in
-- _lib.lua). Every check comes before any write: an unknown parent, or one with too many
-- dependants, links nothing.
-- KEYS: the parents' task hashes (in this queue)
-- ARGV: 1 'link' | 'unlink', 2 the child's eval_id, 3 its queue's name, 4 the most
--       dependants a parent may have, 5… the parents' eval_ids (as KEYS)
-- Returns (link) {'linked', {each parent's state, 'pending' when it was linked}} |
-- {'unknown', {ids}} | {'crowded', id}; (unlink) {'unlinked', n}
local mark = 'x:' .. ARGV[2]
if ARGV[1] == 'unlink' then
  local n = 0
  for _, k in ipairs(KEYS) do
    if redis.call('HDEL', k, mark) == 1 then
      drop_kid(k)
      n = n + 1
    end
  end
  return {'unlinked', n}
end
local states, unknown = {}, {}
for i, k in ipairs(KEYS) do
  local rec = redis.call('HMGET', k, 'state', 'kids')
  states[i] = rec[1] or ''
  if not rec[1] then
    unknown[#unknown + 1] = ARGV[4 + i]
  elseif not TERMINAL_STATES[rec[1]] and tonumber(rec[2] or '0') >= tonumber(ARGV[4]) then
    return {'crowded', ARGV[4 + i]}
  end
end
if #unknown > 0 then return {'unknown', unknown} end
for i, k in ipairs(KEYS) do
  if not TERMINAL_STATES[states[i]] and redis.call('HSETNX', k, mark, ARGV[3]) == 1 then
    redis.call('HINCRBY', k, 'kids', 1)
  end
  if not TERMINAL_STATES[states[i]] then states[i] = 'pending' end
end
return {'linked', states}
