"""`aggregator.fanout`: bounded, weighted fan-out that never leaves a job running behind it."""

from __future__ import annotations

import asyncio
from functools import partial

import pytest

from aggregator.fanout import finish_even_if_cancelled, run_bounded, run_weighted
from aggregator.finalize.job import weighted_windows


async def test_results_in_order_and_weight_never_exceeded() -> None:
    live = {"now": 0, "peak": 0}

    async def job(i: int, weight: int) -> int:
        live["now"] += weight
        live["peak"] = max(live["peak"], live["now"])
        await asyncio.sleep(0.001 * (i % 3))
        live["now"] -= weight
        return i

    weights = [1, 5, 2, 9, 1, 1, 3, 20, 1]
    got = await run_weighted(10, ((w, partial(job, i, min(w, 10))) for i, w in enumerate(weights)))
    assert got == list(range(len(weights))) and live["peak"] <= 10
    assert await run_bounded(3, (partial(job, i, 1) for i in range(7))) == list(range(7))


async def test_a_failure_cancels_and_awaits_the_rest_and_starts_no_more() -> None:
    started: list[int] = []
    finished: list[int] = []

    async def job(i: int) -> None:
        started.append(i)
        if i == 1:
            raise ValueError("boom")
        try:
            await asyncio.sleep(10)
        finally:
            finished.append(i)

    with pytest.raises(ValueError, match="boom"):
        await run_bounded(3, (partial(job, i) for i in range(10)))
    assert started == [0, 1, 2] and sorted(finished) == [0, 2]


async def test_a_cancelled_wait_still_waits_for_the_operation() -> None:
    done = asyncio.Event()

    async def op() -> None:
        await asyncio.shield(asyncio.sleep(0.05))
        done.set()

    task = asyncio.create_task(finish_even_if_cancelled(op()))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert done.is_set()


def test_weighted_windows_keep_order_and_bounds() -> None:
    assert weighted_windows([1, 2, 3, 50, 1, 1], lambda w: w, 6, 2) == [[1, 2], [3], [50], [1, 1]]
