"""The engine of a deployment (engine/engine.py)."""

from __future__ import annotations

from app.engine.queue import Queue


async def test_ping(streams: Queue) -> None:
    assert await streams.engine.ping() is True
