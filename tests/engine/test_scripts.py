"""The script runner (engine/scripts.py): scripts are loaded again after SCRIPT FLUSH."""

from __future__ import annotations

import hashlib
import re

from app.engine.queue import Queue
from app.engine.schedules import SCRIPTS as SCHEDULES
from app.engine.scripts import (
    AUDIT,
    CORE,
    ENQUEUE,
    FAIR,
    HISTORY,
    compile_scripts,
    library_for,
    lua_folder,
)
from tests.engine.conftest import claim_ids, raw, req


async def test_scripts_reload_after_script_flush(streams: Queue) -> None:
    await streams.enqueue(req("before"))
    await raw(streams).script_flush()
    await streams.enqueue(req("single"))
    answers = await streams.engine.enqueue_many([req("batch1"), req("batch2")])
    assert [a["position"] for a in answers] == [3, 4]
    await raw(streams).script_flush()
    assert await claim_ids(streams) == ["before", "single", "batch1", "batch2"]


# Each script carries only the library statements it uses (scripts.library_for).
LIB = """\
-- header comment of the library
local PRIOS = {'high', 'default', 'low'}
local COLD = 1

-- a helper
local function to_map(flat)
  local map = {}
  for i = 1, #flat, 2 do map[flat[i]] = flat[i + 1] end
  return map
end

local function fields(k, entry)
  local found = redis.call('XRANGE', k, entry, entry)
  if #found == 0 then return nil end
  return to_map(found[1][2])
end
local function payload(k, entry)
  local f = fields(k, entry)
  return f and f['payload'] or ''
end

local LAZY
local function lazy()
  if LAZY then return LAZY end
  local function inner() return COLD end
  LAZY = {inner = inner}
  return LAZY
end
function LAZY_T(x) return x end

local function unused(x)
  return 'to_map' .. x.payload  -- payload(), to_map(): only named here
end
-- a trailing comment
"""


def kept(body: str) -> list[str]:
    """The names the statements kept for `body` define, in order."""
    chosen = library_for(LIB, body)
    return [
        s
        for s in (
            "PRIOS",
            "COLD",
            "to_map",
            "fields",
            "payload",
            "LAZY",
            "lazy",
            "LAZY_T",
            "unused",
        )
        if re.search(rf"^(local (function )?|function ){s}\b", chosen, re.M)
    ]


def test_library_for_keeps_what_a_body_uses_transitively_in_order() -> None:
    assert kept("return payload(KEYS[1], ARGV[1])") == ["to_map", "fields", "payload"]
    assert kept("return #PRIOS") == ["PRIOS"]
    assert kept("return lazy().inner()") == ["COLD", "LAZY", "lazy"]
    assert kept("return LAZY_T(1)") == ["LAZY_T"]
    assert kept("return unused(ARGV)") == ["unused"]  # a string, a field: no use
    assert kept("-- payload(k)\nreturn redis.call('GET', 'to_map')") == []
    chosen = library_for(LIB, "return fields(KEYS[1], ARGV[1])")
    assert chosen.startswith("\n-- a helper\nlocal function to_map(flat)\n")  # its comment
    assert "header comment" not in chosen and "trailing" not in chosen


def test_a_statement_defining_nothing_goes_to_every_script() -> None:
    lib = LIB + "redis.replicate_commands(to_map)\n"
    assert kept("return 1") == []
    assert library_for(lib, "return 1").endswith("redis.replicate_commands(to_map)\n")
    assert "local function to_map" in library_for(lib, "return 1")


async def test_pruned_library_runs_with_its_dependencies(streams: Queue) -> None:
    client = raw(streams)
    library = (lua_folder("app.engine") / "_lib.lua").read_text()
    body = "return entry_payload(KEYS[1], ARGV[1])"
    source = library_for(library, body) + body
    assert "local function to_map" in source and "local function finished" not in source
    entry = await client.xadd("{t}s", {"id": "1", "payload": "p"})
    assert await client.eval(source, 1, "{t}s", entry) == b"p"


async def test_every_script_loads_under_its_stable_sha(streams: Queue) -> None:
    client = raw(streams)
    groups = [(FAIR, ("_fair.lua",)), (CORE, ()), (AUDIT, ("_fsck.lua",)), (HISTORY, ())]
    groups += [(SCHEDULES, ()), (ENQUEUE, ("_fair.lua", "_enqueue.lua"))]
    for publish in ("PUBLISH", "SPUBLISH"):
        for names, prelude in groups:
            compiled = compile_scripts("app.engine", names, prelude, publish)
            compile_scripts.cache_clear()
            assert compile_scripts("app.engine", names, prelude, publish) == compiled
            for source, sha in compiled.values():
                assert sha == hashlib.sha1(source.encode()).hexdigest()
                assert await client.script_load(source) == sha
    fair = compile_scripts("app.engine", FAIR, ("_fair.lua",))
    enqueue = compile_scripts("app.engine", ENQUEUE, ("_fair.lua", "_enqueue.lua"))
    assert "local function fence" not in enqueue["enqueue"][0]  # pruned
    assert "local function enqueue_task" in enqueue["enqueue_batch"][0]  # the shared body
    assert "local function finished" not in enqueue["enqueue_batch"][0]  # (parents' only)
    assert "local function fair_lib" in fair["claim"][0]  # the prelude's, when used
    assert "local function fence" in compile_scripts("app.engine", CORE)["complete"][0]
