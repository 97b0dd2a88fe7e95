"""A replica that died mid-finalize delays the next finalize by seconds (the lock's short TTL), and a
holder that lost its lock stops writing (issue 16)."""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from agg_helpers import JOB, POD, make_config
from conftest import TEST_ADMIN_TOKEN

from aggregator.config import AggregatorConfig
from aggregator.errors import StoreError
from aggregator.finalize.job import finalize_job
from aggregator.finalize.lock import JobLock
from aggregator.model import StoredBatch
from aggregator.staging import encode_batch
from aggregator.storage import LocalStore
from aggregator.storage.layout import batch_key, lock_key, summary_key
from blastlogs.protocol import FINALIZE_PATH

DEFAULTS = AggregatorConfig.__dataclass_fields__


def test_defaults_make_a_dead_lock_stale_in_seconds() -> None:
    ttl, renew = DEFAULTS["lock_ttl"].default, DEFAULTS["lock_renew"].default
    assert isinstance(ttl, float) and isinstance(renew, float)
    assert ttl <= 10 and renew <= ttl / 3


async def stage_job(store: LocalStore, batches: int, lines: int = 50) -> None:
    async def one(i: int) -> None:
        evs = tuple((i * lines + j, 1000.0 + i + j / 1000, f"line {i * lines + j}") for j in range(lines))
        b = StoredBatch(JOB, POD, "blast", "running", i, i == batches - 1, 0 if i == batches - 1 else None,
                        None, evs)
        await store.put(batch_key(b), encode_batch(b), overwrite=False)

    for start in range(0, batches, 50):
        await asyncio.gather(*(one(i) for i in range(start, min(start + 50, batches))))


async def test_lock_of_a_vanished_holder_delays_the_next_finalize_by_its_ttl(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    await stage_job(store, 3)
    cfg = make_config(lock_ttl=2.0, lock_renew=0.5, lock_wait=30.0)
    dead = JobLock(store, JOB, ttl=cfg.lock_ttl, wait=1.0, poll=0.05)
    await dead.__aenter__()
    assert dead._renewer is not None
    dead._renewer.cancel()  # the replica died: nobody renews or releases its lock
    started = time.monotonic()
    await finalize_job(store, cfg, JOB, wait_seconds=0, existing_last_output={})
    took = time.monotonic() - started
    assert 1.0 < took < cfg.lock_ttl + 2.0, took
    assert await store.get(lock_key(JOB)) is None


async def test_holder_whose_lock_was_taken_over_stops_and_raises(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    lock = JobLock(store, JOB, ttl=3.0, wait=1.0, poll=0.05, renew=0.1)
    with pytest.raises(StoreError, match="lost its lock"):
        async with lock:
            await store.put(lock_key(JOB), b'{"owner": "someone else", "expires": 1e12}')
            await asyncio.sleep(5)  # cancelled at the next renewal
    assert lock.lost
    assert await store.get(lock_key(JOB)) == b'{"owner": "someone else", "expires": 1e12}'


def post_finalize(url: str, timeout: float) -> int:
    req = urllib.request.Request(url + FINALIZE_PATH.format(job_id=JOB), data=b"", method="POST",
                                 headers={"Authorization": f"Bearer {TEST_ADMIN_TOKEN}"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        status: int = r.status
        return status


async def test_replica_killed_mid_finalize_delays_the_next_by_seconds(tmp_path: Path, start_aggregator: Any) -> None:
    root = tmp_path / "store"
    store = LocalStore(root)
    await stage_job(store, 600)  # a finalize that takes a while, so the kill lands while it holds the lock
    a = start_aggregator(f"file://{root}")
    b = start_aggregator(f"file://{root}")
    threading.Thread(target=lambda: _swallow(post_finalize, a.url, 60), daemon=True).start()
    lock_path = root.joinpath(*lock_key(JOB).split("/"))
    held = await asyncio.to_thread(_appears, lock_path, 30.0)
    a.kill()
    if held:
        assert lock_path.exists(), "a killed replica cannot have released its lock"
    started = time.monotonic()
    assert await asyncio.to_thread(post_finalize, b.url, 60) == 200
    took = time.monotonic() - started
    assert took < DEFAULTS["lock_ttl"].default + 6.0, took  # type: ignore[operator]
    assert await store.get(summary_key(JOB)) is not None
    assert held, "the kill did not land while the lock was held; the delay above was not exercised"


def _appears(path: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.002)
    return path.exists()


def _swallow(fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except OSError:
        pass  # the replica was killed under this request
