"""Cron schedules in Redis: their definitions, the due set, and the two steps of a firing.

Keys, under the default queue's hash tag (`ts:{<QUEUE_NAME>}:`), so one script reaches
them all (`ScheduleKeys`):

- `schedules`: hash, name -> definition JSON (`cron` or `every`, `timezone`, `task`);
- `schedules:due`: zset, name -> next tick (epoch seconds); a schedule is paused exactly
  when it has no entry here;
- `schedules:last`: hash, name -> the last tick fired;
- `schedules:changed`: the channel that wakes every replica's scheduler on a change.

A tick fires in two steps, each atomic on its own, so the target queue may live in another
Cluster slot: the task `<name>:<tick>` is enqueued (enqueue.lua refuses a known eval_id:
the tick already fired), then `advance` compare-and-sets the next tick (schedule_advance.lua:
only if the due set still holds the tick read and the definition is unchanged). A replica
dying between the two leaves the tick due; whoever runs next finds its task there and only
advances. Which tick fires, and every next tick, come from the Redis clock (TIME in the
scripts), never from a replica's.

Imports: client, keys, cadence, scripts (typing), models, errors (and orjson); engine for
typing.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from app.engine.cadence import Cadence
from app.engine.client import subscribed, text, translate_errors
from app.engine.keys import QueueKeys
from app.errors import Conflict, Invalid, NotFound
from app.models import TaskRequest, iso_ms

if TYPE_CHECKING:
    from app.engine.engine import Engine

SCRIPTS = ("schedule_put", "schedule_state", "schedule_due", "schedule_advance", "schedule_read")
ANSWERED = ("schedule_put", "schedule_state")  # their writes are answered to a client
NAME_RE = re.compile(r"^(?!\.+$)[A-Za-z0-9._-]{1,64}$")
MAX_SCHEDULES = 10_000  # per deployment; a turn reads only the due ones
FIELDS = frozenset({"name", "cron", "every", "timezone", "task", "paused"})


@dataclass(frozen=True)
class ScheduleKeys:
    """The key names of a deployment's schedules (see the module docstring)."""

    definitions: str
    due: str
    last: str
    channel: str

    @classmethod
    def of(cls, keys: QueueKeys) -> ScheduleKeys:
        """Under the tag of `keys` (the default queue's)."""
        return cls(
            keys.shared("schedules"),
            keys.shared("schedules:due"),
            keys.shared("schedules:last"),
            keys.shared("schedules:changed"),
        )

    @property
    def all(self) -> list[str]:
        return [self.definitions, self.due, self.last]


def check_name(value: object) -> str:
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise Invalid("name must be 1-64 of A-Z a-z 0-9 . _ -, not only dots")
    return value


def task_request(name: str, tick: int, task: Mapping[str, Any]) -> TaskRequest:
    """The task of tick `tick`: the schedule's task body with eval_id `<name>:<tick>`."""
    return TaskRequest.parse({**task, "eval_id": f"{name}:{tick}"})


@dataclass(frozen=True)
class Schedule:
    """A validated definition: name, cadence, and a POST /tasks body without eval_id."""

    name: str
    cadence: Cadence
    task: dict[str, Any]

    @classmethod
    def parse(cls, data: object, name: str | None = None) -> tuple[Schedule, bool | None]:
        """From a POST /schedules body (PUT: `name` from the path, the body's must match);
        with the body's `paused` (None when absent). Invalid when anything is wrong."""
        if not isinstance(data, dict):
            raise Invalid("body must be a JSON object")
        unknown = sorted(set(data) - FIELDS)
        if unknown:
            raise Invalid(f"unknown field(s): {', '.join(unknown)}")
        if name is not None and data.get("name", name) != name:
            raise Invalid("name in the body must be the one in the path")
        name = check_name(data.get("name", name))
        paused = data.get("paused")
        if paused is not None and not isinstance(paused, bool):
            raise Invalid("paused must be a boolean")
        schedule = cls(name, Cadence.parse(data), _task(data.get("task")))
        schedule.request(0)  # the same validation POST /tasks applies
        return schedule, paused

    @classmethod
    def stored(cls, name: str, raw: bytes | str) -> Schedule:
        doc = orjson.loads(raw)
        return cls(name, Cadence(doc.get("cron"), doc.get("every"), doc["timezone"]), doc["task"])

    def request(self, tick: int) -> TaskRequest:
        """The task of `tick` (Invalid with the field named `task.` when it is bad)."""
        try:
            return task_request(self.name, tick, self.task)
        except Invalid as exc:
            raise Invalid(f"task: {exc}") from None

    def encoded(self) -> bytes:
        return orjson.dumps({**self.cadence.fields(), "task": self.task})

    def view(self, next_tick: Any, last_tick: Any) -> dict[str, Any]:
        """The schedule as the API shows it (ticks as stored: epoch s, '' or None)."""
        nxt, last = _tick(next_tick), _tick(last_tick)
        return {
            "name": self.name,
            **self.cadence.fields(),
            "task": self.task,
            "paused": nxt is None,
            "next_run_at": iso_ms(str(nxt * 1000)) if nxt is not None else None,
            "last_run_at": iso_ms(str(last * 1000)) if last is not None else None,
            "last_eval_id": f"{self.name}:{last}" if last is not None else None,
        }


def _task(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Invalid("task must be an object: a POST /tasks body without eval_id")
    if "eval_id" in value:
        raise Invalid("task: eval_id is set by the schedule (<name>:<tick>)")
    return value


def _tick(value: Any) -> int | None:
    if value is None or value in (b"", ""):
        return None
    return int(float(text(value)))


@dataclass(frozen=True)
class Due:
    """A schedule due now, as a scheduler's turn read it."""

    schedule: Schedule
    tick: int  # its next tick as stored (the CAS compares with it)
    raw: bytes  # its definition as stored (the CAS compares with it)


@dataclass(frozen=True)
class Turn:
    """What one read of the due set found."""

    now_ms: int  # the Redis clock
    due: list[Due]
    earliest: int | None  # the next tick of any schedule (epoch s), None when none runs
    total: int  # schedules
    active: int  # not paused

    @property
    def now(self) -> int:
        return self.now_ms // 1000


class ScheduleStore:
    """The schedules of a deployment (see the module docstring)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.client = engine.client
        self.scripts = engine.scripts
        self.keys = ScheduleKeys.of(engine.keys)
        if SCRIPTS[0] not in self.scripts.shas:  # once per engine
            self.scripts.load("app.engine", SCRIPTS, confirmed=ANSWERED)

    # --- the API's operations ------------------------------------------------------------

    @translate_errors
    async def create(self, schedule: Schedule, paused: bool | None) -> dict[str, Any]:
        """A new schedule; Conflict when the name is taken."""
        return await self._put(schedule, "create", "pause" if paused else "run")

    @translate_errors
    async def replace(self, schedule: Schedule, paused: bool | None) -> dict[str, Any]:
        """A new definition for a schedule (its ticks start over from now; `paused` None
        keeps its state); NotFound when unknown."""
        state = "keep" if paused is None else ("pause" if paused else "run")
        return await self._put(schedule, "replace", state)

    async def _put(self, schedule: Schedule, mode: str, state: str) -> dict[str, Any]:
        next_tick = schedule.cadence.next_after(await self.now())
        argv = [schedule.name, schedule.encoded(), mode, _arg(next_tick), state]
        reply = await self.scripts.run(
            "schedule_put", self.keys.all, [*argv, self.keys.channel, MAX_SCHEDULES]
        )
        outcome = text(reply[0])
        if outcome == "taken":
            raise Conflict(f"schedule already exists: {schedule.name}")
        if outcome == "missing":
            raise NotFound(f"no such schedule: {schedule.name}")
        if outcome == "full":
            raise Invalid(f"at most {MAX_SCHEDULES} schedules per deployment")
        return schedule.view(reply[1], reply[2])

    @translate_errors
    async def get(self, name: str) -> dict[str, Any]:
        _, raw, next_tick, last = await self._read(name)
        if not raw:
            raise NotFound(f"no such schedule: {name}")
        return Schedule.stored(name, raw).view(next_tick, last)

    @translate_errors
    async def listing(self) -> list[dict[str, Any]]:
        """Every schedule, by name (one MULTI: definitions, due set, last ticks)."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hgetall(self.keys.definitions)
        pipe.zrange(self.keys.due, 0, -1, withscores=True)
        pipe.hgetall(self.keys.last)
        defs, due, last = await pipe.execute()
        ticks = {text(name): score for name, score in due}
        lasts = {text(name): tick for name, tick in last.items()}
        return [
            Schedule.stored(name, raw).view(ticks.get(name), lasts.get(name))
            for name, raw in sorted((text(n), raw) for n, raw in defs.items())
        ]

    @translate_errors
    async def pause(self, name: str) -> dict[str, Any]:
        return await self._state(name, "pause")

    @translate_errors
    async def resume(self, name: str) -> dict[str, Any]:
        """Running again from the next tick after now (ticks missed while paused are not
        fired); a running schedule is left as it is."""
        _, raw, _, _ = await self._read(name)
        if not raw:
            raise NotFound(f"no such schedule: {name}")
        next_tick = Schedule.stored(name, raw).cadence.next_after(await self.now())
        return await self._state(name, "resume", next_tick)

    @translate_errors
    async def delete(self, name: str) -> dict[str, Any]:
        await self._state(name, "delete")
        return {"name": name, "deleted": True}

    async def _state(self, name: str, action: str, next_tick: int | None = None) -> dict[str, Any]:
        argv = [name, action, _arg(next_tick), self.keys.channel]
        reply = await self.scripts.run("schedule_state", self.keys.all, argv)
        if text(reply[0]) == "missing":
            raise NotFound(f"no such schedule: {name}")
        return Schedule.stored(name, reply[1]).view(reply[2], reply[3])

    async def _read(self, name: str) -> list[Any]:
        now, raw, next_tick, last = await self.scripts.run("schedule_read", self.keys.all, [name])
        return [int(now), raw, next_tick, last]

    @translate_errors
    async def now(self) -> int:
        """The Redis clock, epoch seconds (TIME of the server holding the schedules)."""
        return int((await self._read(""))[0]) // 1000

    @translate_errors
    async def overview(self) -> dict[str, Any]:
        """For /status: how many schedules, how many run, and the next tick of any."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hlen(self.keys.definitions)
        pipe.zcard(self.keys.due)
        pipe.zrange(self.keys.due, 0, 0, withscores=True)
        total, active, first = await pipe.execute()
        return {
            "count": int(total),
            "active": int(active),
            "paused": int(total) - int(active),
            "next_name": text(first[0][0]) if first else None,
            "next_run_at": iso_ms(str(int(first[0][1]) * 1000)) if first else None,
        }

    # --- a scheduler's turn ----------------------------------------------------------------

    @translate_errors
    async def due(self, limit: int) -> Turn:
        """At most `limit` schedules due by the Redis clock, and when the next one is."""
        now, earliest, total, active, rows = await self.scripts.run(
            "schedule_due", [self.keys.due, self.keys.definitions], [limit]
        )
        due = [
            Due(Schedule.stored(text(name), raw), int(float(text(tick))), raw)
            for name, tick, raw in rows
        ]
        first = int(float(text(earliest)))
        return Turn(int(now), due, None if first < 0 else first, int(total), int(active))

    @translate_errors
    async def advance(self, due: Due, fired: int, next_tick: int | None) -> bool:
        """Compare-and-set the next tick of `due` after tick `fired`; False when another
        replica did it first or the schedule changed meanwhile."""
        argv = [due.schedule.name, due.tick, due.raw, _arg(next_tick), fired]
        return bool(await self.scripts.run("schedule_advance", self.keys.all, argv))

    async def changes(self) -> AsyncIterator[str]:
        """Each change of any schedule, from any process (pub/sub: at-most-once, so a
        scheduler also wakes on its own); `Unavailable` on any failure."""
        await self.scripts.prepare()
        sharded = self.scripts.sharded_pubsub
        async for _, message in subscribed(self.client, [self.keys.channel], sharded):
            yield message


def _arg(tick: int | None) -> str:
    return "" if tick is None else str(tick)
