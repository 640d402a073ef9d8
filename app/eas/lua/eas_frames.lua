-- The error frames of answer-less failures among items a watcher claimed (their stored
-- payload is empty: see eas_payload in _eas.lua).
-- KEYS: the items' task hashes
-- ARGV: none
-- Returns {payload...}, one per key ('' where the record carries no error)
local out = {}
for i, k_task in ipairs(KEYS) do out[i] = eas_payload(k_task, '') end
return out
