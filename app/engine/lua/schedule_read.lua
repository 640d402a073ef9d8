-- One schedule as stored, and the Redis clock (engine/schedules.py): a new or resumed
-- schedule's next tick is computed from this server's time, never a replica's.
-- KEYS: 1 definitions hash, 2 due zset, 3 last hash
-- ARGV: 1 name ('' = none: only the clock)
-- Returns {now ms, definition or '', next tick or '', last tick or ''}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[1] == '' then return {now, '', '', ''} end
local def = redis.call('HGET', KEYS[1], ARGV[1]) or ''
local next_tick = redis.call('ZSCORE', KEYS[2], ARGV[1]) or ''
return {now, def, next_tick, redis.call('HGET', KEYS[3], ARGV[1]) or ''}
