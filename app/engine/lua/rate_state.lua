-- Read-only: a queue's RATE_LIMITS state for /status and /metrics (engine/flow.py): the
-- GCRA's theoretical arrival time (claim.lua, `rate_room` in _fair.lua) and this server's
-- clock, read together on the key's node (a cluster pipeline cannot send TIME there).
-- KEYS: 1 the queue's rate key
-- ARGV: none
-- Returns {TAT in µs ('' none: the whole burst is allowed), seconds, µs of the Redis clock}
local t = redis.call('TIME')
return {redis.call('GET', KEYS[1]) or '', t[1], t[2]}
