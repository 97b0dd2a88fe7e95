"""A failed or cancelled finalize has finished every write it started before it returns (issue 16).

The store is a real LocalStore whose blocking write fails for one chosen key and is slow for another
(a test double of the storage service misbehaving; the code under test is all ours).
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
from agg_helpers import JOB, POD, make_config, read_tree

from aggregator.errors import StoreError
from aggregator.finalize.job import finalize_job
from aggregator.model import StoredBatch
from aggregator.staging import encode_batch
from aggregator.storage import LocalStore
from aggregator.storage.layout import batch_key, chunk_key, lock_key, steps_prefix


class MisbehavingStore(LocalStore):
    """LocalStore whose write of `fail_key` raises and of `slow_key` takes `delay` seconds (in its thread)."""

    def __init__(self, root: Path, *, fail_key: str = "", slow_key: str = "", delay: float = 0.0) -> None:
        super().__init__(root)
        self.fail_key, self.slow_key, self.delay = fail_key, slow_key, delay
        self.armed = True
        self.slow_started = threading.Event()
        self.writes: list[tuple[str, float]] = []  # (key, monotonic time the write completed)

    def _put(self, key: str, data: bytes, overwrite: bool) -> bool:
        armed = self.armed
        if armed and key == self.fail_key:
            raise StoreError(f"write {key}: injected failure")
        if armed and key == self.slow_key:
            self.slow_started.set()
            time.sleep(self.delay)
        done = super()._put(key, data, overwrite)
        self.writes.append((key, time.monotonic()))
        return done

    def _put_all(self, items: list[tuple[str, bytes]]) -> None:
        """`put_many`'s writes, one misbehaving write after the other."""
        for key, data in items:
            self._put(key, data, True)


def stream(pod: str, first_ts: float, lines: int) -> StoredBatch:
    evs = tuple((off, first_ts + off / 1000, f"{pod} line {off}") for off in range(lines))
    return StoredBatch(JOB, pod, "blast", "running", 0, True, 0, None, evs)


async def stage(store: LocalStore, *batches: StoredBatch) -> None:
    for b in batches:
        assert await store.put(batch_key(b), encode_batch(b), overwrite=False)


EARLY = stream(f"{POD}-late", 500.0, 100)  # arrives late, sorts first: every chunk number shifts
MAIN = stream(POD, 1000.0, 800)


async def clean_run(root: Path) -> dict[str, bytes]:
    store = LocalStore(root)
    await stage(store, MAIN, EARLY)
    await finalize_job(store, make_config(), JOB, wait_seconds=0, existing_last_output={})
    return await read_tree(store, steps_prefix(JOB))


async def test_failed_finalize_writes_nothing_after_it_returned(tmp_path: Path) -> None:
    expected = await clean_run(tmp_path / "clean")
    store = MisbehavingStore(tmp_path / "flaky", fail_key=chunk_key(JOB, "running", 5),
                             slow_key=chunk_key(JOB, "running", 3), delay=0.6)
    await stage(store, MAIN)
    with pytest.raises(StoreError):
        await finalize_job(store, make_config(), JOB, wait_seconds=0, existing_last_output={})
    returned = time.monotonic()
    assert await store.get(lock_key(JOB)) is None
    store.armed = False
    await stage(store, EARLY)
    await finalize_job(store, make_config(), JOB, wait_seconds=0, existing_last_output={})
    await asyncio.sleep(0.8)  # time for any straggler of the failed finalize to land
    first_run = [(k, t) for k, t in store.writes if t <= returned]
    assert any(k == chunk_key(JOB, "running", 3) for k, _ in first_run), "the slow write ran"
    # Byte for byte the clean run's objects: chunks, summary, manifest and staging alike.
    assert await read_tree(store, steps_prefix(JOB)) == expected


async def test_cancelled_finalize_writes_nothing_after_the_cancel(tmp_path: Path) -> None:
    store = MisbehavingStore(tmp_path / "slow", slow_key=chunk_key(JOB, "running", 2), delay=0.5)
    await stage(store, MAIN)
    task = asyncio.create_task(finalize_job(store, make_config(), JOB, wait_seconds=0, existing_last_output={}))
    assert await asyncio.to_thread(store.slow_started.wait, 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    returned = time.monotonic()
    count = len(store.writes)
    await asyncio.sleep(0.7)
    assert len(store.writes) == count, store.writes[count:]
    assert all(t <= returned for _, t in store.writes)
    assert await store.get(lock_key(JOB)) is None
