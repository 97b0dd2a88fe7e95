"""The staged objects' encodings: a `StoredBatch` as the bytes of its staging object, a compacted
stream (a `StreamState` and the batch names it covers), and back.

Where the objects live is `aggregator.storage.layout`'s business (`batch_key`, `compact_key`).
"""

from __future__ import annotations

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
    return _split_body(head, [b",\n".join(map(orjson.dumps, state.events))])


def _split_body(head: dict[str, Any], lines: list[bytes | memoryview]) -> bytes:
    # A JSON string never holds a raw newline: the lines between `[` and `]` are exactly the events.
    return b"".join((orjson.dumps(head)[:-1], b",", _EVENTS_LINES, b",\n".join(lines), b"\n]}"))


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
    full = sorted((p for p in pieces if p.count), key=lambda p: p.first)
    if not all(p.ordered for p in full) or any(a.last >= b.first for a, b in pairwise(full)):
        return None
    lines = [p.lines for p in full]
    if sum(p.count for p in full) <= SPLIT_EVENTS:
        meta.events = _decode_seq_events(orjson.loads(b"".join((b"[", b",".join(
            bytes(x).replace(b",\n", b",") for x in lines), b"]"))))
        return encode_compacted(job_id, meta, covers)
    return _split_body(_compacted_head(job_id, meta, covers), lines)


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
    first: list[bytes] = []
    pos = start
    for _ in range(head + 1):  # and the first left out
        nl = data.index(b"\n", pos)
        first.append(data[pos:nl].rstrip(b","))  # an event is an array: only its comma ends in ","
        pos = nl + 1
    last: list[bytes] = []
    pos = end
    for _ in range(tail):
        nl = data.rindex(b"\n", start - 1, pos)
        last.append(data[nl + 1:pos].rstrip(b","))
        pos = nl
    c = decode_compacted(b"".join((data[:split], b'"events":[', b",".join(first + last[::-1]), b"]}")))
    events = c.state.events
    gap = Gap(head, count - head - tail, events[head][0])
    del events[head]
    return CompactedEnds(c.job_id, c.state, gap, c.covers, count)


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
