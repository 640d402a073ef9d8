"""The script runner (engine/scripts.py): scripts are loaded again after SCRIPT FLUSH."""

from __future__ import annotations

from app.engine.queue import Queue
from tests.engine.conftest import claim_ids, raw, req


async def test_scripts_reload_after_script_flush(streams: Queue) -> None:
    await streams.enqueue(req("before"))
    await raw(streams).script_flush()
    await streams.enqueue(req("single"))
    answers = await streams.engine.enqueue_many([req("batch1"), req("batch2")])
    assert [a["position"] for a in answers] == [3, 4]
    await raw(streams).script_flush()
    assert await claim_ids(streams) == ["before", "single", "batch1", "batch2"]
