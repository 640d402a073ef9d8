"""Helpers of the engine's tests: tasks to enqueue, raw Redis reads, claims, and
queues of other settings.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from app.engine.engine import Engine
from app.engine.queue import Queue
from app.models import Task, TaskRequest
from app.settings import Settings


def req(eval_id: str | None = None, **fields: Any) -> TaskRequest:
    data: dict[str, Any] = {"code": "print(1)", **fields}
    if eval_id is not None:
        data["eval_id"] = eval_id
    return TaskRequest.parse(data)


def raw(streams: Queue) -> Any:
    """The client for direct Redis commands (typed loosely: reply shapes vary by command)."""
    return streams.redis


async def server_ms(client: Any) -> int:
    seconds, micros = await client.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def claim_ids(streams: Queue, count: int = 10, consumer: str = "c1") -> list[str]:
    claimed = await streams.claim(consumer, count, 30)
    return [t.eval_id for t in claimed.tasks]


async def claim_one(streams: Queue, consumer: str = "c1", lease: float = 30) -> Task:
    claimed = await streams.claim(consumer, 1, lease)
    assert len(claimed.tasks) == 1, claimed
    return claimed.tasks[0]


async def stream_lengths(streams: Queue) -> list[int]:
    return [await raw(streams).xlen(key) for key in streams.keys.streams]


@pytest.fixture
def make_streams(client: Any, make_settings: Callable[..., Settings]) -> Callable[..., Queue]:
    def make(**overrides: Any) -> Queue:
        return Engine(client, make_settings(**overrides)).default

    return make
