"""The garbage collector of a long-running service process, settled once start-up is over.

CPython's cyclic collector runs a young collection every 700 container allocations and,
whenever the objects promoted since the last one reach a quarter of the old generation, a
full collection that walks every tracked object of the process. A serving process holds
~80,000 objects made at start-up (modules, routes, settings, the scripts, the metric
families) that live as long as the process, and every task promotes a few of its
short-lived containers (those alive at a young collection: futures, frames, dicts), so
under load a full collection of ~50 ms ran every second or so: ~0.3 s of CPU per 20,000
drained tasks in the serving process, several µs per task (issue 14; measured with
`gc.callbacks` on the drain of bench/).

`settle()` is called by the composition roots (`taskstream serve` once uvicorn started,
`taskstream worker` once its runtime started), never on a library path (tests build many
runtimes in one process): it collects once, then moves everything alive into the permanent
generation (`gc.freeze`), so later full collections walk only what was made since (a few
thousand objects, under 1 ms). Cycles made later are still collected; reference counting,
which frees almost every object here, is untouched.

Imports: stdlib only.
"""

from __future__ import annotations

import gc


def settle() -> None:
    """Freeze what start-up made (see the module docstring)."""
    gc.collect()
    gc.freeze()
