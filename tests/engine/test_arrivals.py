"""Arrivals (engine/arrivals.py): one XREAD loop wakes only the waits an entry satisfies."""

from __future__ import annotations

import asyncio
import time

from tests.conftest import wait_for
from tests.eas.conftest import truthy


async def test_arrivals_wake_only_matching_waits_and_follow_the_stream(client):
    from app.engine.arrivals import Arrivals

    key = f"ts:{{arrivals-{time.monotonic_ns()}}}:stream"
    arrivals = Arrivals(client, [key], lambda fields: fields[b"n"])
    try:
        async with (
            arrivals.waiting(lambda n: n == b"7") as seven,
            arrivals.waiting(lambda n: n == b"x") as never,
        ):
            for n in range(10):
                await client.xadd(key, {"n": n})
            await asyncio.wait_for(seven.wait(), 5)
            tail = (await client.xrevrange(key, count=1))[0][0]
            await wait_for(lambda: truthy(arrivals.positions == {key: tail}))
            assert not never.is_set()
    finally:
        await arrivals.close()
