"""The server's start-up heap is frozen (web/server.py ``freeze_startup_heap``): full garbage
collections no longer walk it in the middle of a request (the nurse's request page p99 went
from 165 to 34 ms at 1k requests; docs/performance.md). The timing itself is a benchmark
(benchmarks/bench_worklist.py), not a test."""

from __future__ import annotations

import asyncio
import gc

from aiohttp import web

from securemail.web.server import freeze_startup_heap


def test_start_up_objects_leave_the_collectors_reach() -> None:
    made_at_start = [{"team": i} for i in range(1000)]
    before = gc.get_freeze_count()
    try:
        asyncio.run(freeze_startup_heap(web.Application()))
        assert gc.get_freeze_count() >= before + len(made_at_start)
        # what is made afterwards is still collected: a cycle made now goes at the next collect
        cycle: list[object] = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1
    finally:
        gc.unfreeze()  # the test process keeps collecting everything, as before
