"""`Batch`: a plain value, and its JSON encoding (docs/protocol.md section 4).

Events are encoded once, when read, so a batch's size is known exactly as it grows and the body
is a join of ready bytes; nothing is encoded twice, even when a batch is re-sent or split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
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


def run_fit_py(events: Sequence[bytes], i: int, stop: int, limit: int) -> tuple[int, int]:
    """The largest `k` in `[i, stop]` such that `events[i:k]`, each counted with one separator,
    hold at most `limit` bytes, and those bytes (for `Batch.fitting`)."""
    total = 0
    for k in range(i, stop):
        more = len(events[k]) + 1
        if total + more > limit:
            return k, total
        total += more
    return max(i, stop), total


try:  # the same in one C loop (shipper/_hotpath.c): no running sums as a million Python objects
    from shipper._hotpath import run_fit as _run_fit_list
except ImportError:  # pragma: no cover - built without a C compiler
    _run_fit_list = run_fit_py


def run_fit(events: Sequence[bytes], i: int, stop: int, limit: int) -> tuple[int, int]:
    """`run_fit_py`, in C for a list."""
    return _run_fit_list(events, i, stop, limit) if isinstance(events, list) else run_fit_py(events, i, stop, limit)


@dataclass
class Batch:
    """Events of one stream, contiguous and of one file generation, and what goes with them.

    A plain value that packs itself: `full_for`, `fitting` and `extend` hold the one rule for what
    fits (at most `max_events` events and `max_bytes` bytes of events with their separators; an
    empty batch takes one event whatever its size, so an over-large event is still sent once and
    its 413 answered by a `dropped` report).
    """

    #: encoded event objects, in stream order
    events: list[bytes] = field(default_factory=list)
    offs: list[int] = field(default_factory=list)
    #: sum of len(events) plus the commas between them
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

    def full_for(self, event_bytes: int, limits: Limits) -> bool:
        """Whether one more event of `event_bytes` would break the limits."""
        return bool(self.events) and (len(self.events) >= limits.max_events
                                      or self.size + 1 + event_bytes > limits.max_bytes)

    def full(self, limits: Limits) -> bool:
        """Whether the batch takes no more events at all (`full_for` the smallest one)."""
        return self.full_for(MIN_EVENT_BYTES, limits)

    def fitting(self, events: Sequence[bytes], i: int, n: int, limits: Limits) -> tuple[int, int]:
        """The end `j` of the longest run `events[i:j]` (of `n`) this batch takes, and its bytes with
        one separator each (as `extend` takes them). Found by one walk over the lengths
        (`run_fit`), not event by event in Python; at least `i + 1` unless `full_for(events[i])`."""
        first = 0 if self.events else 1  # no separator before a batch's first event
        stop = min(n, i + limits.max_events - len(self.events))
        j, sized = run_fit(events, i, stop, limits.max_bytes - self.size + first)
        if j == i and first and stop > i:  # an empty batch takes one event whatever its size
            j, sized = i + 1, len(events[i]) + 1
        return j, sized

    def extend(self, events: Sequence[bytes], offs: Sequence[int], sized: int, ts: float) -> None:
        """Append events (with their stream offsets); `sized` is their bytes with one separator
        each, as `fitting` counts them; `ts` is the first event's read time for an empty batch."""
        if not events:
            return
        if not self.events:
            self.first_ts = ts
            sized -= 1
        self.size += sized
        self.events.extend(events)
        self.offs.extend(offs)

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
        self.extend((event,), (off,), len(event) + 1, self.first_ts)

    def split(self) -> tuple[Batch, Batch]:
        """Halve the batch (for a 413): the first half keeps the dropped report, the second the eof.

        Events in a batch are contiguous in the stream and of one file generation, so the first
        half's resume point is the second half's first offset.
        """
        mid = len(self.events) // 2
        cut_off = self.offs[mid]
        first = Batch(cursor=replace(self.cursor, pos=cut_off - self.cursor.base),
                      shipped=self.shipped - (self.end - cut_off), dropped=self.dropped,
                      exit_code=self.exit_code)
        second = Batch(cursor=self.cursor, shipped=self.shipped, eof=self.eof, exit_code=self.exit_code)
        for half, events, offs in ((first, self.events[:mid], self.offs[:mid]),
                                   (second, self.events[mid:], self.offs[mid:])):
            half.extend(events, offs, sum(map(len, events)) + len(events), self.first_ts)
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
    return b"".join((head[:-1], _EVENTS_OPEN, b",".join(batch.events), _EVENTS_CLOSE))  # copied once, not twice


def header_reserve(ident: Identity) -> int:
    """An upper bound on everything in a body but its events, for the byte limit."""
    big = Batch(dropped=Dropped(2**62, 2**62, 2**62, exact=False), exit_code=-(2**31), eof=False)
    return len(encode_batch(ident, 2**62, big)) + 16
