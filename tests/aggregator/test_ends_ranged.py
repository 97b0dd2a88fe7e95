"""A finalize reads a big compacted stream for its ends in ranged reads, on both stores (issue 16): its head
and first lines, then (the head gives its event count) its last lines alone; an object written before the
count was kept is read a slice at a time and counted. Either way the state and gap are what the whole
object gives, and no read is larger than a slice."""

from __future__ import annotations

import random
import re

import pytest

from aggregator import staging
from aggregator.artifacts import StreamState, retained_entries
from aggregator.finalize import streams as streams_module
from aggregator.finalize.streams import StagedStream, StagingReader
from aggregator.model import StoredBatch
from aggregator.staging import decode_compacted, encode_batch, encode_compacted
from aggregator.storage import Store
from aggregator.storage.base import read_range
from aggregator.storage.layout import StagedKey, batch_key, compact_key, parse_staged_key

JOB = "elb-1"


class Recording:
    """A real store, with the ranges read from it recorded (and whole gets counted)."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.ranges: list[tuple[int, int]] = []
        self.gets = 0

    async def get(self, key: str) -> bytes | None:
        self.gets += 1
        return await self.inner.get(key)

    async def read_range(self, key: str, start: int, length: int) -> tuple[bytes, int] | None:
        self.ranges.append((start, length))
        return await read_range(self.inner, key, start, length)

    async def put(self, key: str, data: bytes, *, overwrite: bool = True) -> bool:
        return await self.inner.put(key, data, overwrite=overwrite)

    async def list_keys(self, prefix: str) -> list[str]:
        return await self.inner.list_keys(prefix)


def big_state(rng: random.Random, n: int) -> StreamState:
    events = [(i * 3, 1000.0 + i, i % 4, f"line {i} " + "é],\n" * rng.randint(0, 12)) for i in range(n)]
    return StreamState("pod-1", "blast", events, [(7, 1, 2, 30, True)], True, (0, 1), (0, "running"))


def without_count(data: bytes) -> bytes:
    """The object as written before the head gave its event count."""
    return re.sub(rb',"count":\d+,"events":\[\n', b',"events":[\n', data, count=1)


@pytest.mark.parametrize("counted", [True, False])
async def test_a_big_stream_read_for_its_ends_in_ranged_reads(store: Store, monkeypatch: pytest.MonkeyPatch,
                                                              counted: bool) -> None:
    monkeypatch.setattr(staging, "SPLIT_EVENTS", 50)
    rng = random.Random(16 + counted)
    bounded = 0
    for n in (60, 400, 2000):
        state = big_state(rng, n)
        covers = [f"b-{i:04d}.json" for i in range(rng.randint(1, 40))]
        data = encode_compacted(JOB, state, covers)
        assert (b'"count":' in data) and decode_compacted(without_count(data)).state == state
        if not counted:
            data = without_count(data)
        key = compact_key(JOB, "pod-1", "blast", covers, True)
        await store.put(key, data)
        for scan_slice in (997, 5000, 1 << 20):
            head, tail = rng.randint(0, 40), rng.randint(0, 40)
            monkeypatch.setattr(streams_module, "SCAN_SLICE", scan_slice)
            recording = Recording(store)
            reader = StagingReader(recording, JOB, 4)  # type: ignore[arg-type]
            stream = StagedStream("pod-1", "blast", compacted=[(_staged(key), key)])
            loaded = await reader.load_stream(stream, ends=(head, tail))
            assert loaded is not None and loaded.sources == [key]
            assert retained_entries(loaded.state, head, tail, loaded.gap) == retained_entries(state, head, tail)
            again = await reader.reload([key], (head, tail))
            assert again is not None
            assert retained_entries(again[0], head, tail, again[1]) == retained_entries(state, head, tail)
            assert all(length <= scan_slice for _, length in recording.ranges)
            if n <= head + tail:
                continue  # no more events than the ends: decoded whole (read whole when bigger than a slice)
            assert recording.gets == 0
            read = sum(min(length, len(data) - start) for start, length in recording.ranges)
            if counted and n == 2000 and scan_slice < 1 << 20:  # the head's count: the ends alone are read
                assert read < len(data) // 2
                bounded += 1
            elif not counted:  # every slice, once per read of the stream
                assert read >= 2 * len(data)
                bounded += 1
    assert bounded >= 2


def _staged(key: str) -> StagedKey:
    staged = parse_staged_key(JOB, key)
    assert staged is not None
    return staged


@pytest.mark.parametrize("scan_slice", [500, 1 << 20])
async def test_a_batch_beside_the_object_is_merged_not_skipped(store: Store, monkeypatch: pytest.MonkeyPatch,
                                                               scan_slice: int) -> None:
    """A batch the compacted object does not cover (it arrived after the compaction) is still merged: the
    ends-only read stops at the head, and the stream is read whole as before (not read again when that
    first slice was all of it)."""
    monkeypatch.setattr(staging, "SPLIT_EVENTS", 50)
    monkeypatch.setattr(streams_module, "SCAN_SLICE", scan_slice)
    state = big_state(random.Random(3), 300)
    key = compact_key(JOB, "pod-1", "blast", ["b-0001.json"], False)
    await store.put(key, encode_compacted(JOB, state, ["b-0001.json"]))
    late = StoredBatch(JOB, "pod-1", "blast", "running", 9, True, 0, None, ((5000, 2000.0, "late line"),))
    await store.put(batch_key(late), encode_batch(late))
    recording = Recording(store)
    reader = StagingReader(recording, JOB, 4)  # type: ignore[arg-type]
    loaded = await reader.load_stream(await reader.relist("pod-1", "blast"), ends=(5, 5))
    assert loaded is not None and loaded.state.eof and loaded.gap is not None
    assert loaded.state.events[-1][3] == "late line" and loaded.gap.count == 301 - 10
    # the object's first slice; then the batch, and the object whole unless that slice was all of it
    assert len(recording.ranges) == 1 and recording.gets == (2 if scan_slice == 500 else 1)
