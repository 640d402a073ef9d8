-- Enqueue many tasks of one queue (partition) in one call (issue 14, engine/intake.py): each
-- exactly as enqueue.lua enqueues it (enqueue_task in _enqueue.lua), in order, as if each
-- were its own call one after the other (an eval_id twice in the batch: the second is a
-- duplicate; positions count the tasks before it in the batch), and answered on its own.
-- What is shared is paid once per call: the script call and its library closures, TIME,
-- the counters the positions read (each priority's, once, then kept up to date with what
-- the batch pushes), one HINCRBY of `total:enqueued` and one of the per-minute stats per
-- minute and state. Tasks with parents (depends_on) are not batched: enqueue.lua alone.
-- Each task runs under pcall: a task that raises an error gets that error as its reply
-- (what its own enqueue.lua call would have answered) and the others go on.
-- KEYS: 1 counters, 2 scheduled zset, 3 events, 4 stats, 5-7 stream:high, default, low,
--       8-10 holes:high, default, low, 11 expiries zset, 12 dedup hash, 13 dedup ttl zset,
--       14-22 fair share (keys.QueueKeys.fair_at of high, then default, then low: tenant
--       stream, waiting order, virtual times each), 23… the n task hashes, as the tasks in
--       ARGV
-- ARGV: 1 events maxlen, 2 schedule channel, 3 named queue ('' = the default queue),
--       4 TENANT_WEIGHTS ('name=w,…', for positions under fair share), 5 n, then per task
--       as enqueue.lua's ARGV 1-4 and 8-9: eval_id, priority, payload, run time, callback
--       mark, options (without `w`)
-- Also touched: the record of the task a dedup_key names.
-- Returns one reply per task, in order, as enqueue.lua's (an error reply for a task that
-- raised one).
local n = tonumber(ARGV[5])
local now = now_ms()
local Q = {counters = KEYS[1], scheduled = KEYS[2], events = KEYS[3], dedup_at = 11,
  holes_at = 8, fair_at = {high = 14, default = 17, low = 20}, maxlen = ARGV[1],
  channel = ARGV[2], q = ARGV[3], weights = ARGV[4], now = now,
  now_s = false, fair = false,
  levels = {high = false, default = false, low = false}, created = 0, runs = false}
local STREAM = {high = KEYS[5], default = KEYS[6], low = KEYS[7]}

local out = {}
for i = 1, n do
  local a = 5 + (i - 1) * 6
  local opts = ARGV[a + 6] ~= '' and cjson.decode(ARGV[a + 6]) or nil
  local prio = ARGV[a + 2]
  local ok, reply = pcall(enqueue_task, Q, ARGV[a + 1], KEYS[22 + i], STREAM[prio], prio,
    ARGV[a + 3], ARGV[a + 4], ARGV[a + 5], opts)
  if not ok then
    reply = {err = type(reply) == 'table' and reply.err or tostring(reply)}
  end
  out[i] = reply
end
enqueue_done(Q)
return out
