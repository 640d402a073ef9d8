-- Helpers of the PAI-EAS scripts, prepended after the engine's library (engine/lua/_lib.lua,
-- whose numbered-queue helpers they build on).

-- The error frame of an answer-less failure: empty data, the error as message, tagged with
-- the request id (the alias of the answer item) and status 500.
local function eas_error_frame(rid, err)
  return cjson.encode({tags = {requestId = rid, status = '500'}, msg = err}) .. '\n'
end

-- An item's stored form as readers get it: the answer of a task that failed without one
-- (empty payload, `error` on its record; see answer_numbered) becomes its error frame.
local function eas_payload(k_task, payload)
  if payload ~= '' then return payload end
  local rec = redis.call('HMGET', k_task, 'error', 'rid')
  if not rec[1] then return payload end
  return eas_error_frame(rec[2] or '', rec[1])
end

-- Take a PAI-EAS item out of its queue, whatever its state: delete (record gone; a running
-- forward is told on the cancel channel) or commit (record kept as `completed`).
-- Returns 1 when the item was still in the queue, else 0.
local function eas_drop(prefix, id, commit, now, maxlen, ttl, group)
  local k_task = prefix .. 'task:' .. id
  local rec = redis.call('HMGET', k_task, 'state', 'prio', 'entry', 'seq', 'attempts')
  local state, prio, entry = rec[1], rec[2] or 'default', rec[3]  -- (absent while queued)
  if not state then
    redis.call('ZREM', prefix .. 'index', id)
    return 0
  end
  local k_stream = prefix .. 'stream:' .. prio
  if state == 'queued' then
    redis.call('XDEL', k_stream, entry)
    redis.call('ZADD', prefix .. 'holes:' .. prio, rec[4], id)
  elseif state == 'scheduled' or state == 'retrying' then
    redis.call('ZREM', prefix .. 'scheduled', id)
    redis.call('HINCRBY', prefix .. 'counters', state .. ':' .. prio, -1)
  elseif state == 'processing' then
    redis.call('XACK', k_stream, group, entry)
    redis.call('XDEL', k_stream, entry)
    redis.call('ZREM', prefix .. 'leases', id)
    if not commit then redis.call(QUEUE_PUBLISH, prefix .. 'cancel', id) end
  else
    if not commit then redis.call('DEL', k_task) end
    return 0
  end
  answer_numbered(k_task, id, nil, maxlen)
  if commit then
    redis.call('HSET', k_task, 'state', 'completed', 'finished', now)
    redis.call('HDEL', k_task, 'payload', 'run_at', 'entry')
    redis.call('EXPIRE', k_task, ttl)
    redis.call('HINCRBY', prefix .. 'counters', 'total:completed', 1)
    event(prefix .. 'events', maxlen, id, 'completed', rec[5])
  else
    redis.call('DEL', k_task)
    redis.call('HINCRBY', prefix .. 'counters', 'total:deleted', 1)
    event(prefix .. 'events', maxlen, id, 'deleted', rec[5])
  end
  return 1
end
