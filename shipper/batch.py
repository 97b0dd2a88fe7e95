"""`Batch`: a plain value, and its JSON encoding (docs/protocol.md section 4).

Events are encoded once, when read, so a batch's size is known exactly as it grows and the body
is a join of ready bytes; nothing is encoded twice, even when a batch is re-sent or split.

A read's events are one buffer (`Events`: joined with ",", with where each starts and each line's
stream offset as int64 arrays), and a batch holds runs of such buffers (views, not copies), so
that between encoding and sending there is no Python object per line: a batch fits a run by
bisecting the event starts, and its body is one join of a few pieces.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from itertools import accumulate
from typing import Final

import orjson

from blastlogs.protocol import Dropped
from shipper.reader import Cursor

_EVENTS_OPEN: Final = b',"events":['
_EVENTS_CLOSE: Final = b"]}"
#: No encoded event is shorter (`encode_event(0, 0.0, "")`).
MIN_EVENT_BYTES: Final = len(b'{"off":0,"ts":0.0,"line":""}')


@dataclass(frozen=True)
class Identity:
    job_id: str
    pod: str
    container: str
    phase: str


@dataclass(frozen=True)
class Limits:
    """How much one batch holds: events, and bytes of encoded events (the body's header excluded)."""

    max_events: int
    max_bytes: int

    @classmethod
    def for_body(cls, ident: Identity, max_events: int, max_body_bytes: int) -> Limits:
        """The limits for bodies of at most `max_body_bytes`, this stream's header reserved."""
        return cls(max_events, max_body_bytes - header_reserve(ident))


@dataclass(frozen=True)
class Events:
    """Encoded events of consecutive lines of a stream, as one buffer.

    Event `k` is `buf[bounds[k]:bounds[k + 1] - 1]` (the events joined with ","; `bounds` has one
    more item, `len(buf) + 1`), so `bounds[j] - bounds[i]` is the bytes of events `i..j-1` with
    one separator each. Line `k` spans the stream offsets `offs[k]` to `offs[k + 1]` (`offs` has one
    more item too: where the line after the last starts).
    """

    buf: bytes
    bounds: array[int]
    offs: array[int]

    @classmethod
    def of(cls, events: Sequence[bytes], offs: Sequence[int], end: int) -> Events:
        """From separate events and their lines' stream offsets; `end`: where the last line ends."""
        return cls(b",".join(events), array("q", accumulate((len(e) + 1 for e in events), initial=0)),
                   array("q", [*offs, end]))

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def events(self, i: int = 0, j: int | None = None) -> list[bytes]:
        """Events `i..j-1` as bytes of their own (the slow paths: a split, the tail ring, tests)."""
        buf, bounds = self.buf, self.bounds
        return [buf[bounds[k]:bounds[k + 1] - 1] for k in range(i, len(self) if j is None else j)]

    def view(self, i: int, j: int) -> memoryview:
        """Events `i..j-1` (j > i) as they stand in the buffer, joined with ","."""
        return memoryview(self.buf)[self.bounds[i]:self.bounds[j] - 1]

    def fit(self, i: int, stop: int, limit: int) -> tuple[int, int]:
        """The largest `j` in `[i, stop]` such that events `i..j-1`, each counted with one separator,
        hold at most `limit` bytes, and those bytes: a bisection of the event starts."""
        bounds = self.bounds
        if stop <= i:
            return i, 0
        j = bisect_right(bounds, bounds[i] + limit, i, stop + 1) - 1
        return max(i, j), bounds[max(i, j)] - bounds[i]


@dataclass
class Batch:
    """Events of one stream, contiguous and of one file generation, and what goes with them.

    A plain value that packs itself: `full_for`, `fitting` and `take` hold the one rule for what
    fits (at most `max_events` events and `max_bytes` bytes of events with their separators; an
    empty batch takes one event whatever its size, so an over-large event is still sent once and
    its 413 answered by a `dropped` report).
    """

    #: runs of encoded events, in stream order: events `i..j-1` of each `Events`
    runs: list[tuple[Events, int, int]] = field(default_factory=list)
    #: events held
    count: int = 0
    #: sum of the events' lengths plus the commas between them
    size: int = 0
    #: resume point once this batch is delivered
    cursor: Cursor = field(default_factory=lambda: Cursor(0, 0, 0, 0))
    #: stream bytes counted against the budget once this batch is delivered
    shipped: int = 0
    first_ts: float = 0.0
    dropped: Dropped | None = None
    eof: bool = False
    exit_code: int | None = None

    @property
    def end(self) -> int:
        return self.cursor.off

    @property
    def events(self) -> list[bytes]:
        """The encoded events, each as bytes of its own (not on the hot path)."""
        return [e for run, i, j in self.runs for e in run.events(i, j)]

    @property
    def offs(self) -> list[int]:
        """The events' stream offsets (not on the hot path)."""
        return [off for run, i, j in self.runs for off in run.offs[i:j]]

    @property
    def first_off(self) -> int:
        """The stream offset of the first event (the batch holds one)."""
        run, i, _ = self.runs[0]
        return run.offs[i]

    def pieces(self) -> list[memoryview]:
        """The events as a few pieces, each a run joined with "," (for the body)."""
        return [run.view(i, j) for run, i, j in self.runs]

    def full_for(self, event_bytes: int, limits: Limits) -> bool:
        """Whether one more event of `event_bytes` would break the limits."""
        return bool(self.count) and (self.count >= limits.max_events
                                     or self.size + 1 + event_bytes > limits.max_bytes)

    def full(self, limits: Limits) -> bool:
        """Whether the batch takes no more events at all (`full_for` the smallest one)."""
        return self.full_for(MIN_EVENT_BYTES, limits)

    def fitting(self, run: Events, i: int, n: int, limits: Limits) -> tuple[int, int]:
        """The end `j` of the longest run of events `i..j-1` (of `n`) this batch takes, and their bytes
        with one separator each (as `take` counts them). Found by bisecting the event starts, not
        event by event; at least `i + 1` unless `full_for(event i)`."""
        first = 0 if self.count else 1  # no separator before a batch's first event
        stop = min(n, i + limits.max_events - self.count)
        j, sized = run.fit(i, stop, limits.max_bytes - self.size + first)
        if j == i and first and stop > i:  # an empty batch takes one event whatever its size
            j, sized = i + 1, run.bounds[i + 1] - run.bounds[i]
        return j, sized

    def take(self, run: Events, i: int, j: int, ts: float) -> None:
        """Append events `i..j-1` of `run`; `ts` is the first event's read time for an empty batch."""
        if j <= i:
            return
        sized = run.bounds[j] - run.bounds[i]
        if not self.count:
            self.first_ts = ts
            sized -= 1
        self.size += sized
        self.count += j - i
        self.runs.append((run, i, j))

    def extend(self, events: Sequence[bytes], offs: Sequence[int], ts: float, end: int | None = None) -> None:
        """Append events given one by one, with their stream offsets (a test's, or a split's); `end`:
        where the last line ends, when known (a batch reads only its lines' starts)."""
        if events:
            self.take(Events.of(events, offs, offs[-1] if end is None else end), 0, len(events), ts)

    def resume_at(self, cursor: Cursor, shipped: int) -> None:
        """Where the stream resumes, and what it has shipped of its budget, once this is delivered."""
        self.cursor = cursor
        self.shipped = shipped

    def seal(self, dropped: Dropped | None, eof: bool, exit_code: int | None) -> None:
        """The rest of the header: the report of lines left out before the events, eof, status."""
        self.dropped = dropped
        self.eof = eof
        self.exit_code = exit_code

    def add(self, off: int, event: bytes) -> None:
        self.extend((event,), (off,), self.first_ts)

    def split(self) -> tuple[Batch, Batch]:
        """Halve the batch (for a 413): the first half keeps the dropped report, the second the eof.

        Events in a batch are contiguous in the stream and of one file generation, so the first
        half's resume point is the second half's first offset.
        """
        events, offs = self.events, self.offs
        mid = len(events) // 2
        cut_off = offs[mid]
        first = Batch(cursor=replace(self.cursor, pos=cut_off - self.cursor.base),
                      shipped=self.shipped - (self.end - cut_off), dropped=self.dropped,
                      exit_code=self.exit_code)
        second = Batch(cursor=self.cursor, shipped=self.shipped, eof=self.eof, exit_code=self.exit_code)
        first.extend(events[:mid], offs[:mid], self.first_ts, cut_off)
        second.extend(events[mid:], offs[mid:], self.first_ts, self.end)
        return first, second

    def without_events(self, drop: Dropped) -> Batch:
        """This batch's report and resume point with its events left out, reported as `drop`
        (a single event too large for the aggregator)."""
        return Batch(cursor=self.cursor, shipped=self.shipped, first_ts=self.first_ts,
                     dropped=drop if self.dropped is None else self.dropped.merge(drop),
                     eof=self.eof, exit_code=self.exit_code)


def encode_event(off: int, ts: float, line: str) -> bytes:
    return orjson.dumps({"off": off, "ts": ts, "line": line})


def encode_events(offs: list[int], ts: float, lines: list[str]) -> list[bytes]:
    """`[encode_event(off, ts, line) ...]` for many lines with one ts, byte for byte, at a
    fraction of the cost: no dict per event and no Python step per event (C-level maps)."""
    template = b'{"off":%d,"ts":' + orjson.dumps(ts) + b',"line":%b}'
    return list(map(template.__mod__, zip(offs, map(orjson.dumps, lines), strict=True)))


def _header(ident: Identity, seq: int, batch: Batch) -> dict[str, object]:
    head: dict[str, object] = {
        "job_id": ident.job_id, "pod": ident.pod, "container": ident.container,
        "phase": ident.phase, "seq": seq, "eof": batch.eof,
    }
    d = batch.dropped
    report: dict[str, object] = {"lines": 0, "bytes": 0}
    if d is not None and d.lines:
        report = {"off": d.off, "lines": d.lines, "bytes": d.bytes}
        if not d.exact:
            report["exact"] = False  # lower bounds (docs/protocol.md section 4)
    head["dropped"] = report
    if batch.exit_code is not None:
        head["exit_code"] = batch.exit_code
    return head


def encode_batch(ident: Identity, seq: int, batch: Batch) -> bytes:
    head = orjson.dumps(_header(ident, seq, batch))
    parts: list[bytes | memoryview] = [head[:-1], _EVENTS_OPEN]
    for piece in batch.pieces():  # each run as it stands in its read's buffer: copied once, here
        parts += (piece, b",")
    if batch.runs:
        parts[-1] = _EVENTS_CLOSE
    else:
        parts.append(_EVENTS_CLOSE)
    return b"".join(parts)


def header_reserve(ident: Identity) -> int:
    """An upper bound on everything in a body but its events, for the byte limit."""
    big = Batch(dropped=Dropped(2**62, 2**62, 2**62, exact=False), exit_code=-(2**31), eof=False)
    return len(encode_batch(ident, 2**62, big)) + 16
