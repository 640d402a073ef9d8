"""The engine: the only Redis speaker; it knows no HTTP, no PAI-EAS and runs no loops.

client (connect, error translation), keys (`QueueKeys`), scripts (the Lua runner),
records (task hashes as documents), queue (a queue's transitions), engine (`Engine`: the
queues of a deployment), admin (clear, DLQ, pause, housekeeping), views (counts,
consumers, events, stats), arrivals (one XREAD loop, many waiters), callbacks (the
callbacks stream), fsck and audits (the consistency audit), observer (what transitions it
reports), lua/ (the scripts).

Imports: models, errors, settings (the ground floor) and redis. Nothing above.
"""
