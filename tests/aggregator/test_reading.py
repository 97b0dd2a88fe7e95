"""aggregator.reading on a real store: a read that a finalize's cleanup overtakes still gets every line,
and staged reads match what finalize's own merge gives."""

from __future__ import annotations

import asyncio
from typing import Any

from agg_helpers import JOB, POD, make_config

from aggregator.finalize.job import finalize_job
from aggregator.follow import Follower
from aggregator.model import Dropped, StoredBatch
from aggregator.reading import Selection, staged_events, view_job
from aggregator.staging import encode_batch
from aggregator.storage import Store
from aggregator.storage.layout import batch_key


class GatedStore:
    """The real store, with reads of staged batches held until `release` (once `reading` is set), so a
    finalize can compact and clean up in between."""

    def __init__(self, inner: Store, only: str | None = None) -> None:
        self.inner = inner
        self.only = only
        self.reading = asyncio.Event()
        self.release = asyncio.Event()

    async def get(self, key: str) -> bytes | None:
        if "/b-" in key and not self.release.is_set() and self.only in (None, key):
            self.reading.set()
            await self.release.wait()
        return await self.inner.get(key)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def stored(seq: int, offs: range, *, eof: bool = False, dropped: Dropped | None = None) -> StoredBatch:
    return StoredBatch(JOB, POD, "blast", "running", seq, eof, 0 if eof else None, dropped,
                       tuple((o, 1000.0 + o, f"line {o}") for o in offs))


async def stage(store: Store, batches: list[StoredBatch]) -> None:
    for b in batches:
        await store.put(batch_key(b), encode_batch(b), overwrite=False)


async def test_a_read_overtaken_by_finalize_cleanup_reads_the_compacted_stream(store: Store) -> None:
    cfg = make_config()
    await stage(store, [stored(i, range(i * 10, i * 10 + 10), eof=i == 4) for i in range(5)])
    gated = GatedStore(store)
    reading = asyncio.ensure_future(view_job(gated, cfg, JOB))  # type: ignore[arg-type]
    await gated.reading.wait()
    await finalize_job(store, cfg, JOB, wait_seconds=0, existing_last_output={})
    assert not [k for k in await store.list_keys(f"{JOB}/") if "/b-" in k]  # the batches are gone
    gated.release.set()
    view = await reading
    assert view.info[(POD, "blast")].lines == 50
    lines = [e.line async for e in staged_events(view, Selection())]
    assert lines == [f"line {o}" for o in range(50)]


async def test_full_entries_place_dropped_markers_like_the_artifacts(store: Store) -> None:
    cfg = make_config()
    await stage(store, [stored(0, range(0, 3)), stored(1, range(10, 12), eof=True, dropped=Dropped(5, 2, 4))])
    view = await view_job(store, cfg, JOB)
    got = [(e.line, e.ts) async for e in staged_events(view, Selection())]
    marker = "[... 2 lines (4 bytes) dropped by the shipper ...]"
    assert got == [("line 0", 1000.0), ("line 1", 1001.0), ("line 2", 1002.0), (marker, 1002.0),
                   ("line 10", 1010.0), ("line 11", 1011.0)]
    # position filter: lines at or after off 10 (the marker at off 5 is before).
    later = [e.line async for e in staged_events(view, Selection(position=10))]
    assert later == ["line 10", "line 11"]
    assert [e.at[4] async for e in staged_events(view, Selection())] == [1, 3, 5, 10, 21, 23]


async def test_a_follow_poll_overtaken_by_finalize_cleanup_skips_no_line(store: Store) -> None:
    cfg = make_config()
    await stage(store, [stored(0, range(0, 10))])
    late = stored(1, range(10, 20))
    gated = GatedStore(store, only=batch_key(late))  # its read waits; the eof batch's goes through at once
    gated.release.set()
    follower = Follower(gated, cfg, JOB, Selection())  # type: ignore[arg-type]
    got = [e.line async for group in follower.backlog() for e in group]
    assert got == [f"line {o}" for o in range(10)]
    await stage(store, [late, stored(2, range(20, 30), eof=True)])
    gated.release.clear()
    polling = asyncio.ensure_future(poll(follower))
    await gated.reading.wait()
    await finalize_job(store, cfg, JOB, wait_seconds=0, existing_last_output={})
    gated.release.set()
    for _ in range(3):
        got += await polling
        polling = asyncio.ensure_future(poll(follower))
    await polling
    assert got == [f"line {o}" for o in range(30)]
    assert follower.ended()


async def poll(follower: Follower) -> list[str]:
    return [e.line async for piece in follower.poll() for e in piece]
