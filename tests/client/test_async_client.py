"""What only the asynchronous client shows: many waits at once on one event loop, each
on its own event stream, while a worker completes the tasks; awaitable templates."""

from __future__ import annotations

import asyncio

from taskstream_client import AsyncClient, Job, Worker


async def test_many_concurrent_waits(live):
    async with AsyncClient(live.url) as client:
        template = client.task(priority="low", metadata={"batch": "b"})
        answers = await asyncio.gather(*(template.delay(str(n)) for n in range(20)))
        waits = [asyncio.ensure_future(client.result(a.eval_id, timeout=20)) for a in answers]
        await asyncio.sleep(0.2)  # the waits follow their streams before any task runs

        def double(job: Job) -> int:
            return 2 * int(job.code)

        worker = Worker(double, client=client, concurrency=4, poll=2)
        serving = asyncio.ensure_future(worker.serve(handle_signals=False))
        assert await asyncio.gather(*waits) == [2 * n for n in range(20)]
        worker.stop()
        await asyncio.wait_for(serving, 10)
        assert worker.counts["completed"] == 20
