"""`aggregator.fanout`: bounded, weighted fan-out that never leaves a job running behind it."""

from __future__ import annotations

import asyncio
from functools import partial

import pytest

from aggregator.fanout import Behind, finish_even_if_cancelled, run_bounded, run_weighted
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


async def test_behind_runs_each_job_behind_the_caller_one_at_a_time() -> None:
    log: list[str] = []

    async def job(i: int) -> None:
        log.append(f"start {i}")
        await asyncio.sleep(0.02)
        log.append(f"end {i}")

    async with Behind() as behind:
        for i in range(3):
            await behind.start(partial(job, i))
            await asyncio.sleep(0)
            log.append(f"caller after {i}")  # the caller goes on while job i runs
    assert log == ["start 0", "caller after 0", "end 0", "start 1", "caller after 1", "end 1",
                   "start 2", "caller after 2", "end 2"]


async def test_behind_a_failed_job_raises_at_the_next_start_which_never_runs() -> None:
    ran: list[int] = []

    async def job(i: int) -> None:
        ran.append(i)
        if i == 0:
            raise ValueError("write failed")

    with pytest.raises(ValueError, match="write failed"):
        async with Behind() as behind:
            await behind.start(partial(job, 0))
            await asyncio.sleep(0.01)
            await behind.start(partial(job, 1))
    assert ran == [0]
    with pytest.raises(ValueError, match="write failed"):  # the last job's failure raises on leaving
        async with Behind() as behind:
            await behind.start(partial(job, 0))


@pytest.mark.parametrize("how", ["error", "cancel"])
async def test_behind_leaving_early_cancels_the_running_job_and_waits_for_it(how: str) -> None:
    started, settled = asyncio.Event(), asyncio.Event()

    async def op() -> None:
        await asyncio.sleep(0.1)
        settled.set()

    async def write() -> None:  # cannot be stopped halfway, as a write in a thread
        started.set()
        await finish_even_if_cancelled(op())

    async def caller() -> None:
        async with Behind() as behind:
            await behind.start(write)
            await started.wait()
            if how == "error":
                raise RuntimeError("rendering failed")
            await asyncio.sleep(10)

    task = asyncio.create_task(caller())
    await started.wait()
    if how == "cancel":
        task.cancel()
    with pytest.raises(RuntimeError if how == "error" else asyncio.CancelledError):
        await task
    assert settled.is_set()
