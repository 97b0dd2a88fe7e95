"""The local store runs background work (finalize, compaction) in threads of its own: an ingest's
write completes while every one of them is busy."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from aggregator.storage import LocalStore, local
from aggregator.storage.phase import storage_phase


async def test_an_ingest_write_does_not_wait_behind_a_busy_finalize(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    release = threading.Event()

    async def busy_background() -> None:
        storage_phase.set("finalize")
        await local._in_thread(release.wait, 30.0)

    # more background work than the background lane has threads: all of them busy, the rest queued
    background = [asyncio.create_task(busy_background()) for _ in range(12)]
    try:
        await asyncio.sleep(0.1)
        storage_phase.set("ingest")
        assert await asyncio.wait_for(store.put("job/_staging/p/c/b-1.json", b"{}", overwrite=False), 10.0)
        assert await store.get("job/_staging/p/c/b-1.json") == b"{}"
        assert not release.is_set() and not any(t.done() for t in background)
    finally:
        release.set()
        await asyncio.gather(*background)
