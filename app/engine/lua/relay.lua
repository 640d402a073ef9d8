-- A parent of another queue ended (a relay entry of its queue's callbacks stream, handed
-- here by runtime/callbacks.py through engine/links.py, or found by the enqueue that
-- linked them): the dependant's `w:<parent>` mark is taken, once (a relay delivered twice
-- finds none), and the task is released, cancelled or waits on, as the end of a parent of
-- its own queue would do (parent_ended in _lib.lua).
-- KEYS: 1 the dependant's task hash, 2 counters, 3 scheduled, 4 events, 5-7 stream:high,
--       default, low, then the queue's effects (engine/keys.py)
-- ARGV: 1 its eval_id, 2 the parent's eval_id, 3 the parent's state, 4 events maxlen,
--       5 the record ttl s of a task cancelled here
-- Returns 'cancelled' | 'released' | 'waiting' | 'skipped' (no mark: taken before, or the
-- task is no longer deferred)
local id, pid = ARGV[1], ARGV[2]
if redis.call('HDEL', KEYS[1], 'w:' .. pid) == 0 then return 'skipped' end
local rec = redis.call('HMGET', KEYS[1], unpack(CHILD_FIELDS))
if rec[1] ~= 'deferred' then return 'skipped' end
local now, todo = now_ms(), {}
local verdict = parent_ended(KEYS[1], id, base_of(KEYS[1], id), rec, pid, ARGV[3], now, ARGV[4],
  ARGV[5], todo)
for _, t in ipairs(todo) do finished(t[1], t[2], t[3], now, ARGV[4], ARGV[5]) end
return verdict
