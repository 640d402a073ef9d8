"""The engine of one deployment: client, scripts, settings and observer, and its queues.

`Engine.queue(name)` is the registry of legacy queues: the default queue (no name, or
QUEUE_NAME) and named queues, each `Queue` built once per name and shared by every caller
in the process. Other queues (numbered ones, for a wing above) are made with
`Engine.queue_at(keys)`. `Registry` is a set of names kept in Redis under the deployment's
tag, for whoever needs to find what other replicas started.

Imports: client, keys, links, queue, observer, scripts, models, errors, settings.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from app.engine import links
from app.engine.client import Redis, connect, text, translate_errors
from app.engine.keys import QueueKeys
from app.engine.observer import NoObserver, Observer
from app.engine.queue import Decode, Queue, enqueued
from app.engine.scripts import Scripts
from app.errors import Conflict, Invalid
from app.models import TaskRequest
from app.settings import Settings


class Engine:
    """See the module docstring. `close()` closes the client."""

    def __init__(
        self,
        client: Redis,
        settings: Settings,
        observer: Observer | None = None,
        scripts: Scripts | None = None,
    ) -> None:
        self.client = client
        self.settings = settings
        self.observer: Observer = observer or NoObserver()
        self.scripts = scripts or Scripts(client, settings.durability, settings.server_fsyncs)
        self.keys = QueueKeys.default(settings.queue)  # the default queue's (and the tag's)
        self._queues: dict[str, Queue] = {}
        self.default = self.queue()

    @classmethod
    def connect(cls, url: str, settings: Settings, observer: Observer | None = None) -> Engine:
        """An engine on a new client of `url`."""
        return cls(connect(url), settings, observer)

    async def close(self) -> None:
        await self.client.aclose()

    def queue(self, name: str | None = None) -> Queue:
        """The legacy queue `name` (None or QUEUE_NAME: the default queue), built once, with
        its partitions (QUEUE_PARTITIONS); `<name>#<i>` (`#<i>`: of the default queue) is
        partition i, a routing name task records carry (engine/partitions.py)."""
        name = name or self.settings.queue
        found = self._queues.get(name)
        if found is None:
            whole, mark, part = name.partition("#")
            if mark:
                found = self._partition(self.queue(whole or None), int(part))
            else:
                found = self._queue(name)
            self._queues[name] = found
        return found

    def _queue(self, name: str) -> Queue:
        if name == self.settings.queue:
            keys = self.keys
        else:
            keys = QueueKeys.named(self.settings.queue, name)
        found = Queue(self, keys, limits=self.settings.flow.limits(name))
        count = self.settings.queue_partitions.get(name, 1)
        if count > 1:
            self.spread(found, (count,))
        return found

    def spread(self, queue: Queue, counts: Sequence[int]) -> None:
        """Spread `queue` over max(`counts`) partitions, placing by `counts[0]`."""
        parts = [self._partition(queue, i) for i in range(1, max(counts))]
        queue.spread_over(parts, counts)

    def spread_queues(self) -> list[Queue]:
        """The partitioned queues (QUEUE_PARTITIONS, and those with a count history)."""
        for name in self.settings.queue_partitions:
            self.queue(name)
        return [q for q in self._queues.values() if q.whole is q and q.parts[1:]]

    def _partition(self, whole: Queue, part: int) -> Queue:
        """Partition `part` of `whole`; one beyond its count (QUEUE_PARTITIONS lowered) is
        still reachable by id, standing alone."""
        if part < len(whole.parts):
            return whole.parts[part]
        keys = whole.keys.partition(part)
        return self._queues.get(keys.route) or Queue(self, keys)

    def queue_at(self, keys: QueueKeys, decode: Decode | None = None) -> Queue:
        """A queue of other keys (a numbered queue of a wing above), on this engine."""
        return Queue(self, keys, decode)

    async def known_queue(self, name: str | None) -> Queue | None:
        """The default queue (no name, or QUEUE_NAME) or a named queue this deployment
        knows; None for any other name, so a typo creates nothing."""
        if not name or name == self.settings.queue or await self.knows(name):
            return self.queue(name)
        return None

    @translate_errors
    async def knows(self, name: str) -> bool:
        """A named queue of this deployment: in QUEUE_EXECUTORS, seen by this process, or in
        the registry (one SISMEMBER the first time)."""
        listed = (*self.settings.queue_executors, *self.settings.queue_partitions)
        if name in listed or name in self._queues:
            return True
        return bool(await self.client.sismember(self.keys.registry, name))

    @translate_errors
    async def named_queues(self) -> list[str]:
        """Named legacy queues ever used (SMEMBERS of the registry), sorted."""
        return sorted(text(n) for n in await self.client.smembers(self.keys.registry))

    async def legacy_queues(self) -> list[Queue]:
        """The default queue, then every named queue (QUEUE_EXECUTORS, or ever used)."""
        names = {*self.settings.queue_executors, *self.settings.queue_partitions}
        names |= set(await self.named_queues())
        return [self.default, *(self.queue(n) for n in sorted(names - {self.settings.queue}))]

    @translate_errors
    async def enqueue_many(self, reqs: Sequence[TaskRequest]) -> list[dict[str, Any]]:
        """Store several tasks (each in its queue), concurrently: calls issued together share
        one pipelined write per server (see Scripts), so a batch of default-queue tasks is
        one round trip. Each is atomic on its own, and a refused one is answered
        `{eval_id, error, code}` in its place. A task whose parent is an earlier task of
        the batch is stored once that one is, and so is one whose dedup_key an earlier
        task of the batch carries (so the later one is deduplicated)."""
        queues = [self.queue(req.queue).placed(req.eval_id) for req in reqs]
        stored: dict[str, asyncio.Future[None]] = {}
        after: dict[int, str] = {}  # item -> the eval_id of an earlier item with its dedup_key
        holders: dict[tuple[str, str], str] = {}
        for i, req in enumerate(reqs):
            stored.setdefault(req.eval_id, asyncio.get_running_loop().create_future())
            if req.dedup is not None:
                held = (queues[i].keys.queue, req.dedup.key)
                if held in holders and holders[held] != req.eval_id:
                    after[i] = holders[held]
                holders[held] = req.eval_id

        async def one(i: int, queue: Queue, req: TaskRequest) -> Sequence[Any]:
            waits = [*req.depends_on, *([after[i]] if i in after else [])]
            earlier = [stored[p] for p in waits if p in stored and p != req.eval_id]
            try:
                await asyncio.gather(*earlier)
                return await links.enqueue(queue, req)
            finally:
                if not stored[req.eval_id].done():
                    stored[req.eval_id].set_result(None)

        replies = await asyncio.gather(
            *(one(i, q, r) for i, (q, r) in enumerate(zip(queues, reqs, strict=True)))
        )
        answers: list[dict[str, Any]] = []
        for queue, req, reply in zip(queues, reqs, replies, strict=True):
            try:
                answers.append(enqueued(req, reply))
            except Conflict as exc:
                answers.append({"eval_id": req.eval_id, "error": str(exc), "code": 409})
                continue
            except Invalid as exc:
                answers.append({"eval_id": req.eval_id, "error": str(exc), "code": 422})
                continue
            if "deduplicated" not in answers[-1]:
                self.observer.enqueued(queue.keys.queue, req.priority.value)
        return answers

    def registry(self, name: str) -> Registry:
        """The set `name` of the deployment (a key under its tag)."""
        return Registry(self.client, self.keys.shared(name))

    @translate_errors
    async def ping(self) -> bool:
        return bool(await self.client.ping())


class Registry:
    """A set of names in Redis (SADD / SMEMBERS / SISMEMBER)."""

    def __init__(self, client: Redis, key: str) -> None:
        self.client = client
        self.key = key

    @translate_errors
    async def add(self, name: str) -> None:
        await self.client.sadd(self.key, name)

    @translate_errors
    async def members(self) -> list[str]:
        return sorted(text(raw) for raw in await self.client.smembers(self.key))
