-- Append one PAI-EAS item; its index is the queue's next. The keys numbered_append derives
-- from the prefix are declared below.
-- KEYS: 1 counters, 2 stream of its priority, 3 index zset, 4 events, 5 aliases, 6 stats
-- ARGV: 1 key prefix, 2 priority, 3 payload (header JSON, newline, body bytes),
--       4 events maxlen, 5 sink prefix of an input queue ('' for a sink), 6 requestId tag
--       of a sink item ('' for none)
-- Returns the index.
return numbered_append(ARGV[1], ARGV[2], ARGV[3], ARGV[6], ARGV[5], ARGV[4])
