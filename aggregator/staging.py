"""The staged objects' encodings: a `StoredBatch` as the bytes of its staging object, a compacted
stream (a `StreamState` and the batch names it covers), and back.

Where the objects live is `aggregator.storage.layout`'s business (`batch_key`, `compact_key`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import orjson

from aggregator.artifacts import EncodedEntries, Gap, StreamState, block_of_texts
from aggregator.checks import events_of_columns, is_int, is_nonneg_int, valid_columns
from aggregator.model import Dropped, StoredBatch
from blastlogs.protocol import valid_job_id, valid_k8s_name, valid_phase

STAGING_VERSION = 1

try:  # compiled by setup.py where a C compiler is at hand; else `encoded_entries` declines (decode instead)
    from aggregator import _chunks
except ImportError:  # pragma: no cover - exercised where no compiler built it
    _chunks = None  # type: ignore[assignment]


def encode_batch(batch: StoredBatch) -> bytes:
    d = batch.dropped
    return orjson.dumps({
        "v": STAGING_VERSION,
        "job_id": batch.job_id,
        "pod": batch.pod,
        "container": batch.container,
        "phase": batch.phase,
        "seq": batch.seq,
        "eof": batch.eof,
        "exit_code": batch.exit_code,
        # an inexact report (issue 18) adds `false`; exact ones stay as version 1 always wrote them
        "dropped": None if d is None else [d.off, d.lines, d.bytes, *(() if d.exact else (False,))],
        "events": batch.events,  # (off, ts, line) tuples, written as arrays
    })


def decode_batch(data: bytes) -> StoredBatch:
    """The batch a staging object holds; ValueError when it is not one (never trust storage blindly)."""
    try:
        obj: Any = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise ValueError(f"not JSON: {e}") from None
    if not isinstance(obj, dict) or obj.get("v") != STAGING_VERSION:
        raise ValueError("not a staged batch of a known version")
    try:
        job_id, pod, container, phase = obj["job_id"], obj["pod"], obj["container"], obj["phase"]
        seq, eof, exit_code, dropped, events = (
            obj["seq"], obj["eof"], obj["exit_code"], obj["dropped"], obj["events"])
    except KeyError as e:
        raise ValueError(f"missing field {e}") from None
    if not (valid_job_id(job_id) and valid_k8s_name(pod) and valid_k8s_name(container) and valid_phase(phase)):
        raise ValueError("bad ids")
    if not is_nonneg_int(seq) or not isinstance(eof, bool):
        raise ValueError("bad seq or eof")
    if exit_code is not None and not is_int(exit_code):
        raise ValueError("bad exit_code")
    drop: Dropped | None = None
    if dropped is not None:
        if not (isinstance(dropped, list) and len(dropped) in (3, 4) and all(is_nonneg_int(x) for x in dropped[:3])
                and dropped[3:] in ([], [False])):
            raise ValueError("bad dropped")
        drop = Dropped(dropped[0], dropped[1], dropped[2], exact=len(dropped) == 3)
    if not isinstance(events, list):
        raise ValueError("bad events")
    return StoredBatch(job_id, pod, container, phase, seq, eof, exit_code, drop, _decode_events(events))


def _decode_events(events: list[Any]) -> tuple[tuple[int, float, str], ...]:
    """(off, ts, line) tuples from `[[off, ts, line], ...]`, checked column by column (orjson gives
    plain list, int, float and str, never subclasses); ValueError for any bad event."""
    if not events:
        return ()
    if not (set(map(type, events)) <= {list} and set(map(len, events)) == {3}):
        raise ValueError("bad event")
    offs, tss, lines = zip(*events, strict=True)
    if not valid_columns(offs, tss, lines):
        raise ValueError("bad event")
    return events_of_columns(offs, tss, lines)


@dataclass(frozen=True, slots=True)
class Compacted:
    """A compacted stream: the merged state of the batches named in `covers`."""

    job_id: str
    state: StreamState
    covers: frozenset[str]


#: A compacted object of more events than this has one event per line (still one JSON document), so a
#: finalize reads its first and last lines without decoding the rest (`decode_compacted_ends`), and its
#: first pass reads a stream it keeps whole for its first line and count alone (`light`).
SPLIT_EVENTS = 1_000
_EVENTS_LINES = b'"events":[\n'
COUNT_STEP = 1 << 20


def _compacted_head(job_id: str, state: StreamState, covers: Iterable[str]) -> dict[str, Any]:
    return {
        "v": STAGING_VERSION,
        "kind": "stream",
        "job_id": job_id,
        "pod": state.pod,
        "container": state.container,
        "covers": sorted(covers),
        "eof": state.eof,
        "exit": state.exit,
        "top": state.top,
        # (off, seq, lines, bytes), and `false` after them for an inexact report (exact ones keep
        # the bytes they had before inexact reports existed)
        "drops": [list(d[:4]) if d[4] else list(d) for d in state.drops],
    }


def encode_compacted(job_id: str, state: StreamState, covers: Iterable[str]) -> bytes:
    head = _compacted_head(job_id, state, covers)
    if len(state.events) <= SPLIT_EVENTS:
        return orjson.dumps({**head, "events": state.events})  # (off, ts, seq, line)
    return _split_body(head, len(state.events), [b",\n".join(map(orjson.dumps, state.events))])


def _split_body(head: dict[str, Any], count: int, lines: list[bytes | memoryview]) -> bytes:
    return b"".join(_split_parts(head, count, lines))


def _split_parts(head: dict[str, Any], count: int, lines: list[bytes | memoryview]) -> list[bytes | memoryview]:
    # A JSON string never holds a raw newline: the lines between `[` and `]` are exactly the events.
    # `count` (how many) lets a finalize read the ends alone, not count every line (`EndsScan`).
    parts: list[bytes | memoryview] = [b"".join((orjson.dumps({**head, "count": count})[:-1], b",", _EVENTS_LINES))]
    for i, block in enumerate(lines):
        if i:
            parts.append(b",\n")
        parts.append(block)
    parts.append(b"\n]}")
    return parts


@dataclass(slots=True)
class Piece:
    """Part of a stream in a compacted object's form, for merging without decoding (`join_pieces`): its
    events as lines (`,\n` between them), the first and last `off`, how many, and the rest of its
    state (`meta`, no events). `ordered`: its offs strictly increase (else it cannot be joined)."""

    first: int
    last: int
    count: int
    lines: bytes | memoryview
    meta: StreamState
    ordered: bool = True


def piece_of_state(state: StreamState) -> Piece:
    events = state.events
    offs = [e[0] for e in events]
    ordered = all(a < b for a, b in pairwise(offs))
    meta = StreamState(state.pod, state.container, [], state.drops, state.eof, state.exit, state.top)
    lines = b",\n".join(map(orjson.dumps, events))
    return Piece(offs[0] if offs else -1, offs[-1] if offs else -1, len(events), lines, meta, ordered)


def piece_of_compacted(data: bytes) -> tuple[str, frozenset[str], Piece] | None:
    """A compacted object one event per line as a `Piece` (its lines not copied), its job id and covers;
    None for the one-line layout. ValueError as `decode_compacted`."""
    ends = decode_compacted_ends(data, 1, 1)
    if ends is None or ends.gap is None:
        return None
    split = data.find(_EVENTS_LINES) + len(_EVENTS_LINES)
    first, last = ends.state.events[0][0], ends.state.events[-1][0]
    meta = ends.state
    meta.events = []
    count = ends.gap.count + 2
    return ends.job_id, ends.covers, Piece(first, last, count, memoryview(data)[split:len(data) - 3], meta)


def join_pieces(job_id: str, meta: StreamState, covers: Iterable[str], pieces: list[Piece]) -> bytes | None:
    """The compacted object of `pieces` (their merged `meta` given), byte for byte what `encode_compacted`
    writes for their merged state, when their events are ordered and disjoint (a stream's batches
    usually are); else None (merge them decoded)."""
    parts = joined_parts(job_id, meta, covers, pieces)
    return None if parts is None else b"".join(parts)


def joined_parts(job_id: str, meta: StreamState, covers: Iterable[str],
                 pieces: list[Piece]) -> list[bytes | memoryview] | None:
    """`join_pieces` as the parts whose concatenation it is (the pieces' lines not copied: a store's
    `put_parts` writes them one after another)."""
    full = sorted((p for p in pieces if p.count), key=lambda p: p.first)
    if not all(p.ordered for p in full) or any(a.last >= b.first for a, b in pairwise(full)):
        return None
    lines = [p.lines for p in full]
    if sum(p.count for p in full) <= SPLIT_EVENTS:
        meta.events = _decode_seq_events(orjson.loads(b"".join((b"[", b",".join(
            bytes(x).replace(b",\n", b",") for x in lines), b"]"))))
        return [encode_compacted(job_id, meta, covers)]
    return _split_parts(_compacted_head(job_id, meta, covers), sum(p.count for p in full), lines)


@dataclass(frozen=True, slots=True)
class CompactedEnds:
    """A big compacted stream as finalize needs it: its state with only its `head` first and `tail` last
    events, what it left out (`gap`), and the batch names it covers. Read `light` and kept whole (no more
    than `head + tail` events), `gap` is None and `state` holds only the first of its `count` events."""

    job_id: str
    state: StreamState
    gap: Gap | None
    covers: frozenset[str]
    count: int


def decode_compacted_ends(data: bytes, head: int, tail: int, *, light: bool = False) -> CompactedEnds | None:
    """The compacted stream's ends, decoding only those lines; None when it is not one event per line
    (`SPLIT_EVENTS`) or holds no more than `head + tail` events (decode it all) unless `light` (then its
    first event alone: what a finalize's first pass needs of a stream it keeps whole). ValueError as
    `decode_compacted`."""
    split = data.find(_EVENTS_LINES)
    end = len(data) - 3
    if split < 0 or data[end:] != b"\n]}":
        return None
    start = split + len(_EVENTS_LINES)
    # counted a slice at a time: one `count` over 100 MB would hold the GIL, and the event loop, for ~50 ms
    count = 1 + sum(data.count(b"\n", i, min(i + COUNT_STEP, end)) for i in range(start, end, COUNT_STEP))
    if count <= head + tail:
        if not light:
            return None
        one = data[start:data.index(b"\n", start, end + 1)].rstrip(b",")
        c = decode_compacted(b"".join((data[:split], b'"events":[', one, b"]}")))
        return CompactedEnds(c.job_id, c.state, None, c.covers, count)
    return _ends_of(data, split, data, count, head, tail)


def _ends_of(front: bytes | bytearray, split: int, back: bytes | bytearray, count: int, head: int,
             tail: int) -> CompactedEnds:
    """The ends of a compacted object of `count` (more than `head + tail`) event lines from its `front` (its
    first bytes: the head, `"events":[` at `split`, and at least `head + 1` lines) and its `back` (its last
    bytes: at least its last `tail` lines and the newline before them)."""
    first: list[bytes | bytearray] = []
    pos = split + len(_EVENTS_LINES)
    for _ in range(head + 1):  # and the first left out
        nl = front.index(b"\n", pos)
        first.append(front[pos:nl].rstrip(b","))  # an event is an array: only its comma ends in ","
        pos = nl + 1
    last: list[bytes | bytearray] = []
    pos = len(back) - 3
    for _ in range(tail):
        nl = back.rindex(b"\n", 0, pos)
        last.append(back[nl + 1:pos].rstrip(b","))
        pos = nl
    c = decode_compacted(b"".join((front[:split], b'"events":[', b",".join(first + last[::-1]), b"]}")))
    events = c.state.events
    gap = Gap(head, count - head - tail, events[head][0])
    del events[head]
    return CompactedEnds(c.job_id, c.state, gap, c.covers, count)


#: The slice a big compacted object is read in when read for its ends (`EndsScan`).
SCAN_SLICE = 4 << 20


class EndsScan:
    """`decode_compacted_ends` of an object read a slice at a time, in order (`feed`, then `result`), holding
    only its front (the head and the first `head + 1` event lines), about its last `tail` lines and a
    slice: a finalize reads a stream of 1,000,000 lines (about 110 MB) for its ends in a few MB."""

    def __init__(self, head: int, tail: int) -> None:
        self.head, self.tail = head, tail
        self.front = bytearray()  # the first bytes, until they hold the head and `head + 1` lines
        self.front_done = False
        self.split = -1  # where `"events":[` starts in `front`, once found
        self.newlines = 0  # after the events' start: the event lines (each ends in one, the last one too)
        self.back: deque[tuple[bytes, int]] = deque()  # the last slices, and their newlines
        self.back_newlines = 0
        self.whole = True  # `back` holds every byte fed

    def feed(self, data: bytes) -> None:
        lines = data.count(b"\n")
        self.newlines += lines
        if not self.front_done:
            seen = len(self.front)
            self.front += data
            if self.split < 0:
                self.split = self.front.find(_EVENTS_LINES, max(seen - len(_EVENTS_LINES), 0))
                if self.split >= 0:
                    self.newlines = self.front.count(b"\n", self.split + len(_EVENTS_LINES))
            if self.split >= 0 and self.newlines > self.head:
                self.front_done = True
                pos = self.split + len(_EVENTS_LINES)
                for _ in range(self.head + 1):
                    pos = self.front.index(b"\n", pos) + 1
                del self.front[pos:]  # the head and its first `head + 1` lines are all `result` needs of it
        self.back.append((data, lines))
        self.back_newlines += lines
        while len(self.back) > 1 and self.back_newlines - self.back[0][1] > self.tail:
            self.back_newlines -= self.back.popleft()[1]
            self.whole = False

    def all_fed(self) -> bytes | None:
        """Every byte fed, while they are all still held (none dropped from the back yet)."""
        return b"".join(d for d, _ in self.back) if self.whole else None

    def _head(self) -> dict[str, Any] | None:
        """The object's head (every field but its events), once fed (None before, or when unreadable)."""
        if self.split < 0:
            return None
        try:
            head = orjson.loads(bytes(self.front[:self.split]) + b'"events":[]}')
        except orjson.JSONDecodeError:
            return None
        return head if isinstance(head, dict) else None

    def covers(self) -> frozenset[str] | None:
        """The batch names the object covers, once its head was fed."""
        covers = (self._head() or {}).get("covers")
        if not (isinstance(covers, list) and all(isinstance(c, str) for c in covers)):
            return None
        return frozenset(covers)

    def count(self) -> int | None:
        """How many events the head says the object holds (objects written before it said: None)."""
        count = (self._head() or {}).get("count")
        return count if is_nonneg_int(count) else None

    def result_with_back(self, back: bytes, count: int) -> CompactedEnds | None:
        """The ends from the front fed and the object's last bytes `back` (read apart, after the front: at
        least its last `tail` lines and the newline before them), and the head's `count`; None when they do
        not fit together (read it all)."""
        if (back[-3:] != b"\n]}" or count <= self.head + self.tail or back.count(b"\n") <= self.tail
                or count < self.newlines + back.count(b"\n")):
            return None
        return _ends_of(self.front, self.split, back, count, self.head, self.tail)

    def result(self) -> CompactedEnds | bytes | None:
        """The ends (`decode_compacted_ends`); else the object's bytes when they are still all here (a small
        or one-line object: decode those), or None (read it whole)."""
        if not self.front_done:
            return bytes(self.front)
        back = b"".join(d for d, _ in self.back)
        if back[-3:] != b"\n]}" or self.newlines <= self.head + self.tail:
            return back if self.whole else None
        return _ends_of(self.front, self.split, back, self.newlines, self.head, self.tail)


def decode_compacted(data: bytes) -> Compacted:
    """The compacted stream an object holds; ValueError when it is not one."""
    try:
        obj: Any = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise ValueError(f"not JSON: {e}") from None
    if not isinstance(obj, dict) or obj.get("v") != STAGING_VERSION or obj.get("kind") != "stream":
        raise ValueError("not a compacted stream of a known version")
    try:
        job_id, pod, container, covers, eof, exit_, top, drops, events = (
            obj["job_id"], obj["pod"], obj["container"], obj["covers"], obj["eof"], obj["exit"], obj["top"],
            obj["drops"], obj["events"])
    except KeyError as e:
        raise ValueError(f"missing field {e}") from None
    if not (valid_job_id(job_id) and valid_k8s_name(pod) and valid_k8s_name(container)):
        raise ValueError("bad ids")
    if not (isinstance(covers, list) and all(isinstance(c, str) for c in covers)) or not isinstance(eof, bool):
        raise ValueError("bad covers or eof")
    if exit_ is not None and not (isinstance(exit_, list) and len(exit_) == 2 and all(map(is_int, exit_))):
        raise ValueError("bad exit")
    if not (isinstance(top, list) and len(top) == 2 and is_nonneg_int(top[0]) and valid_phase(top[1])):
        raise ValueError("bad top")
    if not (isinstance(drops, list) and all(
            isinstance(d, list) and (len(d) == 4 or (len(d) == 5 and d[4] is False))
            and all(map(is_nonneg_int, d[:4])) for d in drops)):
        raise ValueError("bad drops")
    if not isinstance(events, list):
        raise ValueError("bad events")
    state = StreamState(pod, container, _decode_seq_events(events), [(d[0], d[1], d[2], d[3], len(d) == 4) for d in drops],
                        eof, None if exit_ is None else (exit_[0], exit_[1]), (top[0], top[1]))
    return Compacted(job_id, state, frozenset(covers))


def _decode_seq_events(events: list[Any]) -> list[tuple[int, float, int, str]]:
    """(off, ts, seq, line) tuples from `[[off, ts, seq, line], ...]`; ValueError for any bad event."""
    if not events:
        return []
    if not (set(map(type, events)) <= {list} and set(map(len, events)) == {4}):
        raise ValueError("bad event")
    offs, tss, seqs, lines = zip(*events, strict=True)
    if not valid_columns(offs, tss, lines) or not (set(map(type, seqs)) <= {int} and min(seqs) >= 0):
        raise ValueError("bad event")
    return list(zip(offs, map(float, tss), seqs, lines, strict=True))


def encoded_entries(data: bytes, job_id: str, head: int, tail: int) -> EncodedEntries | None:
    """A compacted object's retained entries as chunk events' bytes, and its block, without decoding its
    events (aggregator/_chunks.c): when it is one event per line, of this job, kept whole (no more than
    `head + tail` events) and without dropped-line reports; else None (decode it: `decode_compacted`)."""
    if _chunks is None:
        return None
    try:
        light = decode_compacted_ends(data, head, tail, light=True)
    except ValueError:
        return None  # decoding says what is wrong with it
    if light is None or light.gap is not None or light.job_id != job_id or light.state.drops:
        return None
    state = light.state
    middle = b"".join((b',"pod":', orjson.dumps(state.pod), b',"container":', orjson.dumps(state.container),
                       b',"line":'))
    start = data.find(_EVENTS_LINES) + len(_EVENTS_LINES)
    found = _chunks.encode_events(memoryview(data)[start:len(data) - 3], middle)
    if found is None or len(found[0]) != light.count:
        return None
    events, text_bytes = found

    def texts(reverse: bool) -> Iterator[str]:
        return (orjson.loads(e)["line"] for e in (reversed(events) if reverse else events))

    exit_code = state.exit[1] if state.exit is not None else None
    return EncodedEntries(events, block_of_texts(state.pod, state.container, exit_code, len(events), text_bytes, texts))
