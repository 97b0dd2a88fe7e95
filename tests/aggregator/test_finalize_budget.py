"""A replica's finalizes and compactions share one budget (issue 16): four finalizes at once read, between
them, no more streams' worth of staged batches at a time than one finalize alone may, and each still
writes the bytes it writes alone; a compaction of a heavy stream waits for another to end."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from agg_helpers import POD, make_config, read_tree
from test_staging_cleanup import batches, staged

from aggregator.adaptive import AdaptiveLimit
from aggregator.compaction import Compactor
from aggregator.fanout import Budget
from aggregator.finalize import job as job_module
from aggregator.finalize.job import FinalizeBudget, finalize_job
from aggregator.metrics import Metrics
from aggregator.model import StoredBatch
from aggregator.storage import LocalStore
from aggregator.storage.layout import logs_prefix, parse_staged_key, summary_key

JOBS = ("elb-b1", "elb-b2", "elb-b3", "elb-b4")
STREAMS = ("blast", "results-export", "vmtouch", "init")


class Timing(LocalStore):
    """A local store whose reads of staged objects take a little while, watching which streams have a read
    in flight: the most at once (a stream being read holds its batches' worth of the budget)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.reading: dict[tuple[str, str], int] = {}
        self.most = 0

    async def get(self, key: str) -> bytes | None:
        job = key.split("/", 1)[0]
        staged = parse_staged_key(job, key)
        if staged is None:
            return await super().get(key)
        stream = (job, staged.container)
        self.reading[stream] = self.reading.get(stream, 0) + 1
        self.most = max(self.most, len(self.reading))
        try:
            await asyncio.sleep(0.003)
            return await super().get(key)
        finally:
            self.reading[stream] -= 1
            if not self.reading[stream]:
                del self.reading[stream]


def job_batches(job: str) -> list[StoredBatch]:
    return [StoredBatch(job, b.pod, b.container, b.phase, b.seq, b.eof, b.exit_code, b.dropped, b.events)
            for c in STREAMS for b in batches(c, 10)]


async def artifacts_of(store: LocalStore, job: str) -> dict[str, bytes]:
    tree = await read_tree(store, logs_prefix(job))
    tree[summary_key(job)] = await store.get(summary_key(job)) or b""
    return tree


async def four_at_once(root: Path, shared: bool) -> tuple[int, dict[str, dict[str, bytes]]]:
    store = Timing(root)
    for job in JOBS:
        await staged(store, job_batches(job))
    one = FinalizeBudget(reads=Budget(20), cache=Budget(0))  # two 10-batch streams; pass two reads again
    budgets = [one if shared else FinalizeBudget(reads=Budget(20), cache=Budget(0)) for _ in JOBS]
    await asyncio.gather(*(finalize_job(store, make_config(), job, wait_seconds=0, existing_last_output={},
                                        budget=b) for job, b in zip(JOBS, budgets, strict=True)))
    assert one.reads.used == 0 and one.cache.used == 0
    return store.most, {job: await artifacts_of(store, job) for job in JOBS}


async def finalized_alone(tmp_path: Path) -> dict[str, dict[str, bytes]]:
    """Each job's artifacts, finalized alone in a store of its own (`alone-<job>`)."""
    alone: dict[str, dict[str, bytes]] = {}
    for job in JOBS:
        store = LocalStore(tmp_path / f"alone-{job}")
        await staged(store, job_batches(job))
        await finalize_job(store, make_config(), job, wait_seconds=0, existing_last_output={})
        alone[job] = await artifacts_of(store, job)
    return alone


async def test_four_finalizes_at_once_read_what_one_may_and_write_what_each_writes_alone(tmp_path: Path) -> None:
    alone = await finalized_alone(tmp_path)
    most, together = await four_at_once(tmp_path / "shared", shared=True)
    assert most <= 2  # streams of 10 batches in a budget of 20
    assert together == alone
    # The measurement can tell: with a budget each, the four read more streams than that at once.
    most_apart, apart = await four_at_once(tmp_path / "apart", shared=False)
    assert most_apart > 2 and apart == alone


async def test_budget_first_come_first_served_heavy_alone_cancel_gives_back() -> None:
    b = Budget(10)
    order: list[str] = []

    async def take(name: str, w: int, hold: float) -> None:
        async with b.hold(w):
            order.append(name)
            await asyncio.sleep(hold)

    first = asyncio.create_task(take("a", 6, 0.05))
    await asyncio.sleep(0)
    heavy = asyncio.create_task(take("heavy", 50, 0.01))  # cut to 10: waits for a, runs alone
    await asyncio.sleep(0)
    small = asyncio.create_task(take("small", 1, 0))  # fits now, but waits its turn behind heavy
    await asyncio.sleep(0.01)
    assert order == ["a"] and b.used == 6
    gone = asyncio.create_task(b.take(5))
    await asyncio.sleep(0)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    await asyncio.gather(first, heavy, small)
    assert order == ["a", "heavy", "small"] and b.used == 0


async def test_heavy_compactions_take_turns_within_the_budget(tmp_path: Path) -> None:
    store = Timing(tmp_path)
    bs = batches("blast", 12) + batches("vmtouch", 12)
    await staged(store, bs)
    c = Compactor(make_config(), Metrics(), lambda: store, Budget(16))
    await asyncio.gather(c.compact(bs[0].job_id, POD, "blast"), c.compact(bs[0].job_id, POD, "vmtouch"))
    assert store.most == 1  # one stream of 12 batches at a time in a budget of 16, though two compactions may run
    unbounded = Timing(tmp_path / "again")
    await staged(unbounded, bs)
    c = Compactor(make_config(), Metrics(), lambda: unbounded, Budget(100))
    await asyncio.gather(c.compact(bs[0].job_id, POD, "blast"), c.compact(bs[0].job_id, POD, "vmtouch"))
    assert unbounded.most == 2


class WriteTiming(LocalStore):
    """A local store whose chunk writes take a little while, noting the most bytes being written at once."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.writing = 0
        self.most_bytes = 0

    async def put_many(self, items: list[tuple[str, bytes]], concurrency: int,
                       gate: AdaptiveLimit | None = None) -> None:
        size = sum(len(b) for _, b in items)
        self.writing += size
        self.most_bytes = max(self.most_bytes, self.writing)
        try:
            await asyncio.sleep(0.01)
            await super().put_many(items, concurrency, gate)
        finally:
            self.writing -= size


async def test_four_finalizes_share_the_bytes_of_chunks_waiting_for_their_write(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rendered chunks hold the replica's `writes` budget until written. Four finalizes whose windows each
    render more than half of it still all finish (each sends what it holds before it waits for more), with
    the bytes each writes alone, and the bytes being written at once never exceed the budget."""
    alone = await finalized_alone(tmp_path)
    window = len(b"".join((await artifacts_of(LocalStore(tmp_path / "alone-elb-b1"), "elb-b1")).values())) // 4
    monkeypatch.setattr(job_module, "WRITE_BATCH_BYTES", window * 2)
    shared = WriteTiming(tmp_path / "shared")
    for job in JOBS:
        await staged(shared, job_batches(job))
    budget = FinalizeBudget(reads=Budget(20), cache=Budget(0), writes=Budget(window * 3))
    await asyncio.wait_for(asyncio.gather(*(
        finalize_job(shared, make_config(read_concurrency=1), job, wait_seconds=0, existing_last_output={},
                     budget=budget) for job in JOBS)), 60)
    assert {job: await artifacts_of(shared, job) for job in JOBS} == alone
    assert 0 < shared.most_bytes <= window * 3
    assert budget.writes.used == 0 and budget.reads.used == 0
