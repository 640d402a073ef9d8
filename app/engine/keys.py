"""Key names of the queues: one immutable `QueueKeys` per queue, made by its constructors.
This module is the one place where hash tags are chosen (docs/operations.md, *Hash tags*).

Every key of a queue sits under `ts:{<tag>}:`; `{<tag>}` is the Redis Cluster hash tag, so
one script may touch all of them, and each queue may live on its own cluster node. Three
shapes:

- `QueueKeys.default(tag)`: a deployment's default legacy queue (QUEUE_NAME = `tag`).
  Its tag is also the deployment's *home*: the registry of named queues, the audit's
  summary, and the id directory (below) live there.
- `QueueKeys.named(tag, name)`: a named legacy queue, on a tag of its own,
  `{<QUEUE_NAME>/<name>}` (`named_tag`): its own task records, dependants, callbacks
  stream. Eval_ids stay unique across a deployment's legacy queues through the id
  directory: the default queue's record key of an id (`directory(eval_id)`) holds, for a
  task of a named queue, a *pointer* (a hash `{q: <name>, at: <ms>}`), so a by-id call
  without a queue name reads one key of the home tag to find its queue.
- `QueueKeys.partition(part)`: partition `part` of a legacy queue spread over several
  hash tags (QUEUE_PARTITIONS): `{<tag>#<part>}`; partition 0 is the queue's own tag.
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
# fair share: the pseudo-consumer holding tenants' waiting entries (engine/lua/_lib.lua)
PARKED = "~waiting"


@dataclass(frozen=True)
class QueueKeys:
    """The key names of one queue (see the module docstring for the three shapes)."""

    queue: str  # the queue's name, as operators see it
    base: str  # `ts:{<tag>}:`, shared by every queue under the tag
    prefix: str  # this queue's own keys
    task_prefix: str  # its task records: `<task_prefix><eval_id>`
    q: str = ""  # a named legacy queue's name (its task hashes carry it as `q`); else ''
    home: str = ""  # the deployment's home tag (`ts:{QUEUE_NAME}:`); '' = `base`
    reply: QueueKeys | None = None  # a numbered queue's reply queue (same tag), if any
    part: int = 0  # a partitioned queue's partition (`partition`); 0: the queue's own tag
    is_numbered: bool = False  # made by `numbered` (items numbered by a counter)
    counters: str = field(init=False, repr=False)
    leases: str = field(init=False, repr=False)
    scheduled: str = field(init=False, repr=False)
    dlq: str = field(init=False, repr=False)
    dlq_index: str = field(init=False, repr=False)
    events: str = field(init=False, repr=False)
    stats: str = field(init=False, repr=False)  # per-minute counts of state changes (2 h)
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
    registry: str = field(init=False, repr=False)  # named legacy queues ever used (home)
    callbacks: str = field(init=False, repr=False)  # result callbacks and dependency relays
    expiring: str = field(init=False, repr=False)  # named queues: finished ids -> expiry ms
    fsck: str = field(init=False, repr=False)  # the audit's summary, totals, lock, cursor
    deferred: str = field(init=False, repr=False)  # zset: deferred tasks by creation (listing)
    pace: str = field(init=False, repr=False)  # list: samples of the counters (engine/pace.py)
    # fair share (docs/flow-control.md), in PRIORITY_ORDER: the entries of tenants' tasks,
    # their waiting order (`<tenant>|<seq>|<eval_id>`), the tenants' virtual times
    tenant_streams: tuple[str, ...] = field(init=False, repr=False)
    waiting: tuple[str, ...] = field(init=False, repr=False)
    vtimes: tuple[str, ...] = field(init=False, repr=False)
    rate: str = field(init=False, repr=False)  # RATE_LIMITS: the GCRA's theoretical arrival

    def __post_init__(self) -> None:
        p = self.prefix
        b = self.home or self.base
        object.__setattr__(self, "home", b)
        derived = {
            "counters": f"{p}counters",
            "leases": f"{p}leases",
            "scheduled": f"{p}scheduled",
            "dlq": f"{p}dlq",
            "dlq_index": f"{p}dlq:index",
            "events": f"{p}events",
            "stats": f"{p}stats",
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
            "callbacks": f"{p}callbacks",
            "expiring": f"{p}expiring",
            "fsck": f"{b}fsck:",
            "deferred": f"{p}deferred",
            "pace": f"{p}pace",
            "tenant_streams": tuple(f"{p}stream:{x.value}:tenants" for x in PRIORITY_ORDER),
            "waiting": tuple(f"{p}tenants:{x.value}:waiting" for x in PRIORITY_ORDER),
            "vtimes": tuple(f"{p}tenants:{x.value}" for x in PRIORITY_ORDER),
            "rate": f"{p}rate",
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
        """The named legacy queue `name` of the deployment whose default queue is `tag`, on
        its own hash tag (`named_tag`)."""
        base = f"ts:{{{named_tag(tag, name)}}}:"
        return cls(name, base, base, f"{base}task:", q=name, home=f"ts:{{{tag}}}:")

    @classmethod
    def numbered(
        cls, tag: str, name: str, part: str | None = None, reply: QueueKeys | None = None
    ) -> QueueKeys:
        """A numbered queue `name` under `tag`, nested under `part` when given; `reply`: the
        queue (under the same tag) its items are answered into."""
        base = f"ts:{{{tag}}}:"
        prefix = base + (f"{part}:" if part else "")
        return cls(name, base, prefix, f"{prefix}task:", reply=reply, is_numbered=True)

    def partition(self, part: int) -> QueueKeys:
        """Partition `part` of this legacy queue (QUEUE_PARTITIONS, docs/operations.md,
        *Partitioned queues*): partition 0 is the queue itself, so one partition is exactly
        the unpartitioned layout; partition i > 0 has the tag `{<the queue's tag>#i}` (no
        queue name holds `#`) and its records carry the routing name `<q>#i` (`#i` for
        the default queue), which `Engine.queue` resolves back to this partition."""
        if part == 0:
            return self
        tag = self.base[len("ts:{") : -len("}:")]
        base = f"ts:{{{tag}#{part}}}:"
        q = f"{self.q}#{part}"
        return QueueKeys(self.queue, base, base, f"{base}task:", q=q, home=self.home, part=part)

    @property
    def route(self) -> str:
        """The name `Engine.queue` resolves to this queue (or partition): `q`, or the
        default queue's name."""
        return self.q or self.queue

    @property
    def effects(self) -> list[str]:
        """What finishing a task of this queue may touch beyond its streams, counters and
        events (the helpers of engine/lua/_lib.lua): the schedule (a released dependant
        with a run_at), per-minute stats, the expiries zset, dedup index and deferred zset
        (a dependant cancelled or released, a dedup_key let go: issue 15, listing), the
        callbacks stream (callbacks and relays) and a named queue's expiring zset, or a numbered
        queue's index and aliases and its reply queue's keys (an answer appended there).
        (A released dependant of a tenant goes through the schedule, so the fair-share keys
        are not among these.) Scripts that may finish a task take these last in KEYS, so
        every key they touch is declared; the default queue's are six, so its hot path
        sends few more bytes."""
        found = [self.scheduled, self.stats, self.expiries, self.dedup, self.deferred]
        if not self.is_numbered:  # a legacy queue: callbacks, relays; a named one's expiry
            found += [self.callbacks, self.expiring] if self.q else [self.callbacks]
            return found
        found += [self.index, self.aliases]
        if self.reply is not None:
            r = self.reply
            found += [r.counters, r.index, r.aliases, r.stream("default"), r.events, r.stats]
        return found

    @property
    def fair(self) -> tuple[str, ...]:
        """The fair-share keys as the scripts take them (`fair_keys` in _fair.lua): tenant
        streams, waiting orders, virtual times, each high, default, low."""
        return (*self.tenant_streams, *self.waiting, *self.vtimes)

    def fair_at(self, priority: Priority | str) -> tuple[str, str, str]:
        """The fair-share keys of one priority (enqueue.lua takes these alone): its tenant
        stream, waiting order and virtual times."""
        i = PRIORITY_ORDER.index(Priority(priority))
        return self.tenant_streams[i], self.waiting[i], self.vtimes[i]

    def task(self, eval_id: str) -> str:
        return self.task_prefix + eval_id

    def stream(self, priority: Priority | str) -> str:
        return f"{self.prefix}stream:{Priority(priority).value}"

    def shared(self, name: str) -> str:
        """A key of the deployment (not of this queue), on the home tag: `<home><name>`."""
        return self.home + name

    def directory(self, eval_id: str) -> str:
        """Where the id directory keeps `eval_id`: the default queue's record key of it (a
        pointer when the task is in a named queue; see the module docstring)."""
        return f"{self.home}task:{eval_id}"


def named_tag(default: str, name: str) -> str:
    """The hash tag of the named queue `name` beside the default queue `default`: queue
    names hold no `/` (NAMED_QUEUE_RE), so no two queues share a tag."""
    return f"{default}/{name}"
