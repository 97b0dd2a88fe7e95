"""One stream's staging, read and compacted: its batches and compacted objects merged into one state.

A compacted object (`c-{count}-{digest}.json`) holds the merged state of the batches it names, so
a finalize reads one object per compacted stream plus the batches that came after it. Finalize
compacts each stream it reads that had more than one object to read (put-if-absent under a key
naming the covered set: idempotent; re-finalize gives the same bytes, since merging is associative),
and so does a replica in the background after a stream's eof (`aggregator.compaction`), without the
lock: a listed object gone when read (`Overtaken`) makes `load_stream` list the stream again.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from aggregator.adaptive import AdaptiveLimit
from aggregator.artifacts import Gap, StreamState, merge_states, state_of_batch
from aggregator.errors import StoreError
from aggregator.fanout import cpu_work, run_bounded
from aggregator.staging import (
    SCAN_SLICE,
    CompactedEnds,
    EndsScan,
    Piece,
    decode_batch,
    decode_compacted,
    decode_compacted_ends,
    encode_compacted,
    joined_parts,
    piece_of_compacted,
    piece_of_state,
)
from aggregator.storage import Store
from aggregator.storage.base import GetsMany, put_parts, read_range
from aggregator.storage.layout import StagedKey, compact_key, parse_staged_key, stream_prefix

log = logging.getLogger("aggregator.finalize")

T = TypeVar("T")

#: About what one staged event weighs, for deciding what work leaves the loop (`cpu_work`).
EVENT_BYTES = 100
#: Times `load_stream` lists a stream again after a listed object was gone (a compaction overtook it).
RELIST_TRIES = 5


def _state_of_parts(parts: list[bytes | memoryview], ends: Ends | None,
                    light: bool) -> tuple[StreamState, Gap | None, int | None]:
    """`_state_of_body` of the parts' concatenation; for its `ends`, fed to `EndsScan` a slice at a time, so
    a compaction of a big stream never holds the whole of its new object."""
    if ends is not None and len(parts) > 1:
        scan = EndsScan(*ends)
        for part in parts:
            for i in range(0, len(part), SCAN_SLICE):
                scan.feed(bytes(part[i:i + SCAN_SLICE]))
        got = scan.result()
        if isinstance(got, CompactedEnds):
            return got.state, got.gap, None
    return _state_of_body(b"".join(parts), ends, light)


def _state_of_body(body: bytes, ends: Ends | None, light: bool) -> tuple[StreamState, Gap | None, int | None]:
    """A compacted object's state: its ends alone when `ends` allow (a big object), or its first event
    alone when `light` allows (`Loaded.light`), else all of it."""
    if ends is not None:
        e = decode_compacted_ends(body, *ends, light=light)
        if e is not None:
            return e.state, e.gap, None if e.gap is not None else e.count
    return decode_compacted(body).state, None, None


class Overtaken(Exception):
    """A listed staged object was gone when read: a compaction (at ingest, or a finalize's cleanup)
    deleted it after writing the compacted object that covers it. List the stream again."""


@dataclass
class StagedStream:
    """A stream's staging keys, as listed: its batches and its best (largest) compacted object."""

    pod: str
    container: str
    batches: dict[str, str] = field(default_factory=dict)  # name -> key
    compacted: list[tuple[StagedKey, str]] = field(default_factory=list)

    def weight(self) -> int:
        """About how many batches reading the stream means holding: those its largest compacted object
        covers, or those staged (which include the covered ones while `STAGING_RETENTION` is `all`)."""
        best = max((c[0].covers for c in self.compacted), default=0)
        return max(best, len(self.batches), 1)

    def best(self) -> str | None:
        if not self.compacted:
            return None
        return max(self.compacted, key=lambda c: (c[0].covers, c[0].name))[1]


def group_staged(job_id: str, keys: list[str]) -> dict[tuple[str, str], StagedStream]:
    """The listing's staged objects by stream."""
    out: dict[tuple[str, str], StagedStream] = {}
    for key in keys:
        staged = parse_staged_key(job_id, key)
        if staged is None:
            continue
        s = out.setdefault(staged.stream, StagedStream(staged.pod, staged.container))
        if staged.compacted:
            s.compacted.append((staged, key))
        else:
            s.batches[staged.name] = key
    return out


@dataclass(slots=True)
class Loaded:
    """A stream as `StagingReader.load` read it."""

    state: StreamState
    sources: list[str]
    #: Staged objects the stream's compacted object makes redundant (deleted after a finalize).
    redundant: list[str]
    #: When `state` holds only the stream's ends (`Ends`): what it left out.
    gap: Gap | None = None
    #: When `state` holds only the stream's first event (read `light`): how many it has, all kept.
    light: int | None = None


#: A finalize's head and tail retention: a big compacted object is then read for its ends alone.
Ends = tuple[int, int]
#: A compacted object's state, covers, and, read in part: what its ends left out, or (`light`) its count.
Found = tuple[StreamState, frozenset[str], Gap | None, int | None]


def _decode_compacted(ends: Ends | None, light: bool, data: bytes) -> tuple[str, Found]:
    """A compacted object's job id and what `Found` says, read for its `ends` (or `light`) when it allows."""
    if ends is not None:
        e = decode_compacted_ends(data, *ends, light=light)
        if e is not None:
            return e.job_id, (e.state, e.covers, e.gap, None if e.gap is not None else e.count)
    c = decode_compacted(data)
    return c.job_id, (c.state, c.covers, None, None)


def _or_none(fn: Callable[..., T], *args: Any) -> T | None:
    """`fn(*args)`, or None for a ValueError (what cannot be decoded is read whole, where it is logged)."""
    try:
        return fn(*args)
    except ValueError:
        return None


async def _gone_as_none(read: Awaitable[T | None]) -> T | None:
    try:
        return await read
    except Overtaken:
        return None


class StagingReader:
    """Reads staged objects, at most `concurrency` at a time across every stream of a finalize; with
    `adaptive`, fewer while the store's answers slow down as requests queue (`AdaptiveLimit`: a finalize's
    thousands of requests, not a compaction's or a reader's few, which would end before it adapts)."""

    def __init__(self, store: Store, job_id: str, concurrency: int, *, adaptive: bool = False) -> None:
        self.store = store
        self.job_id = job_id
        self.concurrency = concurrency
        #: every storage request of the finalize holds one of its slots: its reads, its writes (chunks
        #: through `put_keys`, compacted objects) and its deletes; adaptive, at least two, so the chunk
        #: write one batch behind never stops the reading (`write_chunks`)
        least = min(2, concurrency) if adaptive else concurrency
        self.gate = AdaptiveLimit(concurrency, least=least, start=least)

    async def _get(self, key: str) -> bytes | None:
        async with self.gate.slot():
            return await self.store.get(key)

    async def _scan(self, key: str, ends: Ends, batches: Collection[str] = ()) -> CompactedEnds | bytes | None:
        """The compacted object at `key` read for its `ends` a slice at a time (`EndsScan`): its head and
        first lines, then (when its head gives its `count`) its last lines alone, else every slice. Its
        ends; or its bytes (small, or one-line: decode them); or None (read it whole, as `_compacted` does:
        it also logs what is unreadable), also as soon as its head shows it does not cover all of `batches`
        (they are joined or merged onto it; its bytes when that first slice was all of it). `Overtaken`
        when it is gone."""
        scan = EndsScan(*ends)
        pos, size = 0, -1
        checked = not batches
        while size < 0 or pos < size:
            data, size = await self._slice(key, pos, SCAN_SLICE)
            await cpu_work(len(data), scan.feed, data)
            pos += len(data)
            if not data:
                break
            if not checked and scan.split >= 0:
                checked = True
                covers = scan.covers()
                if covers is None or not all(n in covers for n in batches):
                    return scan.all_fed() if pos >= size else None  # a small object read whole: not again
            count = scan.count() if scan.front_done and pos < size else None
            if count is not None:
                parts, start = await self._back(key, pos, size, ends[1])
                if start > pos:
                    back = b"".join(parts)
                    return await cpu_work(len(back), _or_none, scan.result_with_back, back, count)
                for part in parts:  # the rest was no more than the last lines: all of it is read
                    await cpu_work(len(part), scan.feed, part)
                break
        return await cpu_work(len(scan.front) + ends[1] * EVENT_BYTES, _or_none, scan.result)

    async def _slice(self, key: str, start: int, length: int) -> tuple[bytes, int]:
        async with self.gate.slot():
            got = await read_range(self.store, key, start, length)
        if got is None:
            raise Overtaken(key)
        return got

    async def _back(self, key: str, after: int, size: int, tail: int) -> tuple[list[bytes], int]:
        """The object's last slices (in order) back to where they hold `tail` lines and the newline before
        them, or back to `after`; and where they start."""
        parts: list[bytes] = []
        lines = 0
        start = size
        while lines <= tail and start > after:
            begin = max(after, start - SCAN_SLICE)
            data, now = await self._slice(key, begin, start - begin)
            if now != size or len(data) != start - begin:
                raise Overtaken(key)  # not the object the front came from
            parts.insert(0, data)
            lines += data.count(b"\n")
            start = begin
        return parts, start

    async def _read(self, key: str, decode: Callable[[bytes], T], what: str, data: bytes | None = None) -> T | None:
        """The decoded object, or None when it is unreadable (logged, skipped); `Overtaken` when gone."""
        if data is None:
            data = await self._get(key)
        if data is None:
            raise Overtaken(key)
        try:
            return await cpu_work(len(data), decode, data)
        except ValueError as e:
            log.error(f"unreadable {what} skipped", extra={"fields": {"key": key, "error": str(e)}})
            return None

    async def _batch(self, key: str) -> StreamState | None:
        batch = await self._read(key, decode_batch, "staged batch")
        return state_of_batch(batch) if batch is not None and batch.job_id == self.job_id else None

    async def _compacted(self, key: str, ends: Ends | None = None, data: bytes | None = None,
                         light: bool = False) -> Found | None:
        """The compacted object at `key` (from `data` when it was read already)."""
        c = await self._read(key, partial(_decode_compacted, ends, light), "compacted stream", data)
        return c[1] if c is not None and c[0] == self.job_id else None

    async def load(self, stream: StagedStream, *, compact: bool = True, ends: Ends | None = None,
                   light: bool = False) -> Loaded | None:
        """The stream's merged state, the keys it now comes from (after compacting, just one), and what
        that compacted object makes redundant; `Overtaken` when a listed object is gone (`load_stream`
        lists again). Readers pass `compact=False` (a gone object is skipped): only a finalize or an
        ingest-side compaction may write a compacted object (cleanup relies on compactions only growing,
        so never from a partial read). A finalize passes its retention as `ends`: a big compacted object
        that covers every listed batch is then read for those ends alone (`Loaded.gap`), and with `light`
        one kept whole for its first event alone (`Loaded.light`)."""
        read_best: bytes | None = None  # the compacted object's bytes, when `_load_joined` read them
        best = stream.best()
        if compact and ends is not None and best is not None:
            # a finalize (or compaction) of a stream that is a big compacted object and no batch beside it
            # reads it for its ends, a slice at a time (the usual case once its eof compaction ran)
            scanned = await self._scan(best, ends, stream.batches.keys())
            if isinstance(scanned, CompactedEnds):
                if scanned.job_id == self.job_id and all(n in scanned.covers for n in stream.batches):
                    return Loaded(scanned.state, [best], self._redundant(stream, scanned.covers, best), scanned.gap)
            elif scanned is not None:
                read_best = scanned
        if compact:
            joined, loaded, read_best = await self._load_joined(stream, ends, light, read_best)
            if joined:
                return loaded
        states: list[StreamState] = []
        covers: frozenset[str] = frozenset()
        sources: list[str] = []
        if best is not None:
            found = await (self._compacted(best, ends, read_best, light) if compact
                           else _gone_as_none(self._compacted(best)))
            if found is not None and (found[2] is not None or found[3] is not None):
                if not [n for n in stream.batches if n not in found[1]]:
                    return Loaded(found[0], [best], self._redundant(stream, found[1], best), found[2], found[3])
                found = await self._compacted(best, None, read_best)  # batches to merge into it: all events
            if found is not None:
                states.append(found[0])
                covers = found[1]
                sources.append(best)
        rest = sorted(name for name in stream.batches if name not in covers)
        # A compaction must cover everything it read and nothing less: a gone object raises `Overtaken`.
        # Readers skip it instead (they list again afterwards: aggregator/reading.py).
        jobs: list[Callable[[], Awaitable[StreamState | None]]] = [
            partial(self._batch, stream.batches[n]) if compact
            else partial(_gone_as_none, self._batch(stream.batches[n])) for n in rest]
        read = await run_bounded(self.concurrency, jobs)
        states.extend(s for s in read if s is not None)
        sources.extend(stream.batches[n] for n in rest)
        if not states:
            return None
        size = sum(len(s.events) for s in states) * EVENT_BYTES
        state = await cpu_work(size, merge_states, states)
        if not compact:
            return Loaded(state, sources, [])
        if len(sources) > 1:
            covers = covers | {n for n, s in zip(rest, read, strict=True) if s is not None}
            key = compact_key(self.job_id, stream.pod, stream.container, covers, state.eof)
            body = await cpu_work(size, encode_compacted, self.job_id, state, covers)
            async with self.gate.slot():
                await self.store.put(key, body, overwrite=False)
            sources = [key]
        if len(sources) != 1 or sources[0] in stream.batches.values():
            return Loaded(state, sources, [])
        return Loaded(state, sources, self._redundant(stream, covers, sources[0]))

    async def _batch_piece(self, key: str) -> Piece | None:
        state = await self._batch(key)
        return None if state is None else await cpu_work(len(state.events) * EVENT_BYTES, piece_of_state, state)

    async def _load_joined(self, stream: StagedStream, ends: Ends | None, light: bool = False, data: bytes | None = None,
                           ) -> tuple[bool, Loaded | None, bytes | None]:
        """`load` (compacting) without decoding every event: the stream's compacted object (one event per
        line) and its batches read as `Piece`s and joined (`joined_parts`) when their events are ordered
        and disjoint; `(False, None, bytes of the compacted object if read)` when they are not, or the
        stream is not worth it (then `load` merges decoded states, without reading that object again).
        Memory is about the old object's bytes and the new batches' lines, not its events decoded: the new
        object is written from them as parts (`put_parts`; Azure joins them), and its state is scanned from
        them. `data`: the compacted object's bytes, when read already."""
        best = stream.best()
        pieces: list[Piece] = []
        covers: frozenset[str] = frozenset()
        found: tuple[str, frozenset[str], Piece] | None = None
        if best is not None:
            if data is None:
                data = await self._get(best)
            if data is None:
                raise Overtaken(best)
            try:
                found = await cpu_work(len(data), piece_of_compacted, data)
            except ValueError:
                return False, None, data  # `load` logs it and reads the batches
            if found is None or found[0] != self.job_id:
                return False, None, data  # small (one line), or not this job's
            covers = found[1]
            pieces.append(found[2])
        rest = sorted(name for name in stream.batches if name not in covers)
        if best is None and len(rest) < 2:
            return False, None, None  # a lone batch: nothing to compact
        read = await run_bounded(self.concurrency, [partial(self._batch_piece, stream.batches[n]) for n in rest])
        pieces.extend(p for p in read if p is not None)
        if not pieces:
            return True, None, None
        covers = covers | {n for n, p in zip(rest, read, strict=True) if p is not None}
        meta = merge_states([p.meta for p in pieces])
        if best is not None and len(pieces) == 1:
            assert data is not None
            parts: list[bytes | memoryview] | None = [data]  # nothing readable beside it
            key = best
        else:
            parts = await cpu_work(sum(len(p.lines) for p in pieces), joined_parts, self.job_id, meta, covers, pieces)
            if parts is None:
                return False, None, data  # overlapping batches: merged decoded (they are read again)
            key = compact_key(self.job_id, stream.pod, stream.container, covers, meta.eof)
            # written from its parts (the old object's lines and the batches'), never joined in memory
            async with self.gate.slot():
                await put_parts(self.store, key, parts, overwrite=False)
        del pieces, read, data, found  # what `parts` does not hold of them
        assert parts is not None
        state, gap, count = await cpu_work(sum(map(len, parts)), _state_of_parts, parts, ends, light)
        sources = [key]
        redundant = [] if key in stream.batches.values() else self._redundant(stream, covers, key)
        return True, Loaded(state, sources, redundant, gap, count), None

    @staticmethod
    def _redundant(stream: StagedStream, covers: frozenset[str], kept: str) -> list[str]:
        """What the stream's compacted object `kept`, covering `covers`, makes redundant. Compactions of a
        stream only grow (each starts from the largest), so the other compacted objects are older."""
        redundant = [stream.batches[n] for n in sorted(covers) if n in stream.batches]
        return redundant + sorted(k for _, k in stream.compacted if k != kept)

    async def load_stream(self, stream: StagedStream, *, compact: bool = True,
                          ends: Ends | None = None, light: bool = False) -> Loaded | None:
        """`load`, listing the stream again while a listed object is gone: what covers it was written
        before it was deleted, so the new listing has it (`RELIST_TRIES` at most, then StoreError)."""
        for _ in range(RELIST_TRIES):
            try:
                return await self.load(stream, compact=compact, ends=ends, light=light)
            except Overtaken:
                stream = await self.relist(stream.pod, stream.container)
        raise StoreError(f"staging of {stream.pod}/{stream.container} kept changing while read")

    async def relist(self, pod: str, container: str) -> StagedStream:
        """The stream's staging as listed now."""
        keys = await self.store.list_keys(stream_prefix(self.job_id, pod, container))
        return group_staged(self.job_id, keys).get((pod, container), StagedStream(pod, container))

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        """Many small objects' bytes (None when gone), in one call where the store offers it."""
        if isinstance(self.store, GetsMany):
            async with self.gate.slot(timed=False):  # many objects: its time is not one request's
                return await self.store.get_many(keys)
        return await run_bounded(self.concurrency, [partial(self._get, k) for k in keys])

    async def get(self, key: str) -> bytes:
        """A staged object's bytes; `Overtaken` when it is gone."""
        data = await self._get(key)
        if data is None:
            raise Overtaken(key)
        return data

    async def reload(self, sources: list[str], ends: Ends | None = None,
                     data: bytes | None = None) -> tuple[StreamState, Gap | None] | None:
        """The state of a stream from the keys `load` gave (pass two of a finalize), and what it left out
        when it is a big compacted object read for its `ends` (from `data` when it was read already);
        `Overtaken` when one of them is gone."""
        if len(sources) == 1 and ends is not None:
            staged = parse_staged_key(self.job_id, sources[0])
            if staged is not None and staged.compacted:
                if data is None:
                    scanned = await self._scan(sources[0], ends)
                    if isinstance(scanned, CompactedEnds):
                        return (scanned.state, scanned.gap) if scanned.job_id == self.job_id else None
                    data = scanned
                found = await self._compacted(sources[0], ends, data)
                return None if found is None else (found[0], found[2])
        read = await run_bounded(self.concurrency, [partial(self._load_any, k) for k in sources])
        states = [s for s in read if s is not None]
        if not states:
            return None
        return await cpu_work(sum(len(s.events) for s in states) * EVENT_BYTES, merge_states, states), None

    async def _load_any(self, key: str) -> StreamState | None:
        staged = parse_staged_key(self.job_id, key)
        if staged is not None and staged.compacted:
            found = await self._compacted(key)
            return None if found is None else found[0]
        return await self._batch(key)
