"""Key names of the queues: one immutable `QueueKeys` per queue, made by its constructors.

Every key of a queue sits under `ts:{<tag>}:`; `{<tag>}` is the Redis Cluster hash tag, so
one script may touch all of them. Three shapes:

- `QueueKeys.default(tag)`: a deployment's default legacy queue (QUEUE_NAME), right under
  the tag;
- `QueueKeys.named(tag, name)`: a named legacy queue beside it, under `<base>q:<name>:`,
  sharing the default queue's task records (`<base>task:<id>`), so eval_ids are unique
  across queues and dependencies may cross them;
- `QueueKeys.numbered(tag, name, part)`: a queue whose items are numbered by a counter of
  their own (`counters.index`), with an `index` zset of the numbers still in the queue and
  an `aliases` hash (alias -> number); `part` nests a second one under the same tag, so one
  script can finish an item of the first and append its answer to the second.

Imports: models.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from app.models import PRIORITY_ORDER, Priority

GROUP = "workers"  # the consumer group of every priority stream
CALLBACK_GROUP = "senders"  # the consumer group of the callbacks stream (engine/callbacks.py)


@dataclass(frozen=True)
class QueueKeys:
    """The key names of one queue (see the module docstring for the three shapes)."""

    queue: str  # the queue's name, as operators see it
    base: str  # `ts:{<tag>}:`, shared by every queue under the tag
    prefix: str  # this queue's own keys
    task_prefix: str  # its task records: `<task_prefix><eval_id>`
    q: str = ""  # a named legacy queue's name (its task hashes carry it as `q`); else ''
    counters: str = field(init=False, repr=False)
    leases: str = field(init=False, repr=False)
    scheduled: str = field(init=False, repr=False)
    dlq: str = field(init=False, repr=False)
    dlq_index: str = field(init=False, repr=False)
    events: str = field(init=False, repr=False)
    cancel_channel: str = field(init=False, repr=False)
    schedule_channel: str = field(init=False, repr=False)
    cleanup_lock: str = field(init=False, repr=False)
    paused: str = field(init=False, repr=False)  # set: consumers and pull workers get nothing
    streams: tuple[str, ...] = field(init=False, repr=False)  # in PRIORITY_ORDER
    holes: tuple[str, ...] = field(init=False, repr=False)  # in PRIORITY_ORDER
    index: str = field(init=False, repr=False)  # numbered queues: numbers still queued
    aliases: str = field(init=False, repr=False)  # numbered queues: alias -> number
    expiries: str = field(init=False, repr=False)  # zset: waiting tasks -> expiry ms
    dedup: str = field(init=False, repr=False)  # hash: dedup_key -> eval_id holding it
    dedup_ttl: str = field(init=False, repr=False)  # zset: throttled dedup_key -> until ms
    registry: str = field(init=False, repr=False)  # named legacy queues ever used
    deps_prefix: str = field(init=False, repr=False)  # deps:<parent> = set of dependants
    callbacks: str = field(init=False, repr=False)  # result callbacks of every legacy queue
    fsck: str = field(init=False, repr=False)  # the audit's summary, totals, lock, cursor
    deferred: str = field(init=False, repr=False)  # zset: deferred tasks by creation (listing)
    pace: str = field(init=False, repr=False)  # list: samples of the counters (engine/pace.py)

    def __post_init__(self) -> None:
        p, b = self.prefix, self.base
        derived = {
            "counters": f"{p}counters",
            "leases": f"{p}leases",
            "scheduled": f"{p}scheduled",
            "dlq": f"{p}dlq",
            "dlq_index": f"{p}dlq:index",
            "events": f"{p}events",
            "cancel_channel": f"{p}cancel",
            "schedule_channel": f"{p}schedule",
            "cleanup_lock": f"{p}cleanup-lock",
            "paused": f"{p}paused",
            "streams": tuple(f"{p}stream:{prio.value}" for prio in PRIORITY_ORDER),
            "holes": tuple(f"{p}holes:{prio.value}" for prio in PRIORITY_ORDER),
            "index": f"{p}index",
            "aliases": f"{p}rid",
            "expiries": f"{p}expiries",
            "dedup": f"{p}dedup",
            "dedup_ttl": f"{p}dedup:ttl",
            "registry": f"{b}queues",
            "deps_prefix": f"{b}deps:",
            "callbacks": f"{b}callbacks",
            "fsck": f"{b}fsck:",
            "deferred": f"{p}deferred",
            "pace": f"{p}pace",
        }
        for name, value in derived.items():
            object.__setattr__(self, name, value)  # frozen: set once, here

    @classmethod
    def default(cls, tag: str) -> QueueKeys:
        """The deployment's default legacy queue (QUEUE_NAME = `tag`)."""
        base = f"ts:{{{tag}}}:"
        return cls(tag, base, base, f"{base}task:")

    @classmethod
    def named(cls, tag: str, name: str) -> QueueKeys:
        """A named legacy queue under the default queue's tag `tag`; its task records stay
        the default queue's."""
        base = f"ts:{{{tag}}}:"
        return cls(name, base, f"{base}q:{name}:", f"{base}task:", q=name)

    @classmethod
    def numbered(cls, tag: str, name: str, part: str | None = None) -> QueueKeys:
        """A numbered queue `name` under `tag`, nested under `part` when given."""
        base = f"ts:{{{tag}}}:"
        prefix = base + (f"{part}:" if part else "")
        return cls(name, base, prefix, f"{prefix}task:")

    def task(self, eval_id: str) -> str:
        return self.task_prefix + eval_id

    def stream(self, priority: Priority | str) -> str:
        return f"{self.prefix}stream:{Priority(priority).value}"

    def shared(self, name: str) -> str:
        """A key of the whole tag (not of this queue): `<base><name>`."""
        return self.base + name
