"""Pure finalize logic (docs/protocol.md sections 5-7): merge staged batches into chunk artifacts and summaries.

No I/O: `finalize/job.py` reads staging, calls `build_artifacts`, numbers and writes the chunks.

Choices where docs/protocol.md is silent (each is tested):

- Copies of one `(stream, off)` event: the lowest `(ts, seq, line)` wins, so even two copies with
  equal `ts` and `seq` resolve the same way whatever order the batches come in.
- Copies of one dropped report (same `off`): the lowest `(seq, lines, bytes)` wins. Reports with
  `lines <= 0` are nothing. A report's byte range is not compared with the events: the shipper
  never sends both a line and a drop report covering it.
- `exit_code`: the highest-`seq` batch carrying one wins; equal `seq` -> the larger code. The
  default phase: the highest-`seq` batch's `phase`; equal `seq` -> the greater phase name.
- Head/tail retention: the omitted marker replaces the span from the first to the last omitted
  line. Dropped markers inside that span follow it; one lying just before the first omitted line
  stays before it. Every line is therefore in the artifacts or counted by exactly one marker.
- A marker's `ts` is that of the closest retained line before it in its stream, else the closest
  after it, else 0.0 (a stream with no retained line).
- A container the phase table names is primary only in phases it also feeds.
- A stream with no retained line events (no events, or markers only, whose ts is then a placeholder
  0.0) sorts after the streams with lines, ties by pod then container.
- Streams with no events still belong to their phases (in `containers` with `lines` 0) and, when
  primary, give a `last_output` block (header, and exit code if known).
- Phases appear in `phases`/`steps` sorted by name; `complete` is true for no streams at all.
- Text that is not valid Unicode (lone surrogates) is encoded with `?` in `last_output`.
"""

from __future__ import annotations

import itertools
import operator
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Final

import orjson

from aggregator.model import StoredBatch
from blastlogs.protocol import DEFAULT_PHASE_TABLE, dropped_marker, omitted_marker

#: Per stream, this many first and last lines are kept (docs/protocol.md section 6).
DEFAULT_HEAD_LINES: Final = 1000
DEFAULT_TAIL_LINES: Final = 10000
#: At most this many events per chunk artifact.
DEFAULT_CHUNK_EVENTS: Final = 100
#: `last_output` is cut above this many bytes, keeping `LAST_OUTPUT_HALF` bytes at each end.
LAST_OUTPUT_LIMIT: Final = 6144
LAST_OUTPUT_HALF: Final = 3072

_OFF = operator.itemgetter(0)
_STEP_KEYS: Final = ("last_output", "truncated", "lines", "omitted_lines", "chunks", "containers")
_SUMMARY_KEYS: Final = ("job_id", "complete", "incomplete_streams", "steps")
_CONTAINER_KEYS: Final = ("pod", "container", "lines", "exit_code")
_STREAM_KEYS: Final = ("pod", "container")

#: Bytes a stream's `last_output` block keeps at each end: enough for any cut of the joined blocks.
_SPAN_KEEP: Final = LAST_OUTPUT_LIMIT

#: One artifact entry of a stream: (ts, text, marker_count); marker_count is 0 for a line event.
Entry = tuple[float, str, int]
#: A chunk event: as built from an entry, or already as its bytes (`Chunker.add_encoded`).
ChunkEvent = dict[str, Any] | bytes


@dataclass
class Artifacts:
    """What finalize writes and answers, before chunks get their seq numbers."""

    phases: dict[str, list[list[ChunkEvent]]] = field(default_factory=dict)
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    incomplete_streams: list[dict[str, str]] = field(default_factory=list)
    complete: bool = True


@dataclass(slots=True)
class StreamState:
    """A stream's staged batches merged by the rules above: what any further batch merges into.

    It is a compacted stream's content (`aggregator.staging`): merging states is associative and
    commutative, so compacted objects plus batches give what the batches alone give.
    """

    pod: str
    container: str
    #: (off, ts, seq, line): each `off` once, the lowest `(ts, seq, line)`, ordered by `off`.
    events: list[tuple[int, float, int, str]]
    #: (off, seq, lines, bytes, exact): each `off` once, the lowest `(seq, lines, bytes, exact)`,
    #: ordered by `off`; `exact` False for a report of what the shipper could not count.
    drops: list[tuple[int, int, int, int, bool]]
    eof: bool
    #: (seq, code) of the highest-seq batch carrying an exit code (equal seq: larger code).
    exit: tuple[int, int] | None
    #: (seq, phase) of the highest-seq batch (equal seq: greater phase).
    top: tuple[int, str]


def state_of_batch(batch: StoredBatch) -> StreamState:
    seq = batch.seq
    d = batch.dropped
    return StreamState(
        pod=batch.pod, container=batch.container,
        events=[(off, ts, seq, line) for off, ts, line in batch.events],
        drops=[] if d is None or d.lines <= 0 else [(d.off, seq, d.lines, d.bytes, d.exact)],
        eof=batch.eof,
        exit=None if batch.exit_code is None else (seq, batch.exit_code),
        top=(seq, batch.phase),
    )


def merge_states(states: Sequence[StreamState]) -> StreamState:
    """One stream's states (from batches or compacted objects) merged into one."""
    if not states:
        raise ValueError("nothing to merge")
    first = states[0]
    if len(states) == 1:
        return first
    exits = [s.exit for s in states if s.exit is not None]
    return StreamState(
        pod=first.pod, container=first.container,
        events=_merge_events(states), drops=_merge_drops(states),
        eof=any(s.eof for s in states),
        exit=max(exits) if exits else None,
        top=max(s.top for s in states),
    )


@dataclass(slots=True)
class TextSpan:
    """A block of text ("\\n"-joined parts) as far as `last_output` needs it: its UTF-8 size and, when
    large, only its first and last `keep` bytes (`full` says whether `head` is the whole block)."""

    size: int
    head: bytes
    tail: bytes
    full: bool

    @classmethod
    def of(cls, parts: list[str], keep: int) -> TextSpan:
        total = sum(map(_utf8_len, parts)) + len(parts) - 1 if parts else 0
        if total <= 2 * keep:
            data = b"\n".join(map(_utf8, parts))
            return cls(total, data, data, True)
        return cls(total, _edge(parts, keep), _edge(parts[::-1], keep, back=True), False)

    @classmethod
    def of_sized(cls, total: int, parts: Callable[[bool], Iterator[str]], keep: int) -> TextSpan:
        """`of` for parts whose joined size is known (`total`), read lazily from the front (`parts(False)`)
        and the back (`parts(True)`): a big block is then read at its ends alone."""
        if total <= 2 * keep:
            return cls.of(list(parts(False)), keep)
        return cls(total, _edge(parts(False), keep), _edge(parts(True), keep, back=True), False)


@dataclass(slots=True)
class StreamSummary:
    """What a finalize keeps of a stream between its two passes: everything but its entries."""

    pod: str
    container: str
    entries: int
    lines: int
    marked: int
    eof: bool
    exit_code: int | None
    phase: str
    first_ts: float
    #: this stream's block of `last_output` (when it is primary in a phase); None until its entries are
    #: read, for a stream whose first pass read it `light` (a finalize's second pass fills it in)
    block: TextSpan | None

    def sort_key(self) -> tuple[int, float, str, str]:
        if self.lines:
            return (0, self.first_ts, self.pod, self.container)
        return (1, 0.0, self.pod, self.container)


@dataclass(slots=True)
class Plan:
    """The artifacts' shape from stream summaries alone: each phase's streams in order, its step
    (chunk count included) and the job's completeness. The chunks' events come stream by stream."""

    members: dict[str, list[StreamSummary]] = field(default_factory=dict)
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: every stream in artifact order with the phases it feeds: one pass over it gives each phase's
    #: members in order, so a stream feeding two phases is read once
    order: list[tuple[StreamSummary, list[str]]] = field(default_factory=list)
    #: each phase's primary streams in order: their blocks make its `last_output` (`fill_last_output`)
    primary: dict[str, list[StreamSummary]] = field(default_factory=dict)
    incomplete_streams: list[dict[str, str]] = field(default_factory=list)
    complete: bool = True


@dataclass(frozen=True, slots=True)
class Gap:
    """What a stream's state left out of its events (`aggregator.staging.decode_compacted_ends`): `count`
    events after its first `head` ones, the first of them at `off`. Its events are then the `head`
    first and the rest the last ones of the stream."""

    head: int
    count: int
    off: int


def retained_entries(state: StreamState, head: int, tail: int, gap: Gap | None = None) -> tuple[list[Entry], int]:
    """A stream's artifact entries after head/tail retention, and its marker total. With `gap`, the
    state holds only the stream's first `gap.head` and its last events (`gap.head` is `head`, and the
    last ones are `tail`): the same entries as from every event."""
    if gap is None and not state.drops and len(state.events) <= head + tail:
        # every line kept, no marker: the common case, and the one finalize meets millions of lines in
        return [(ts, line, 0) for _, ts, _, line in state.events], 0
    events = [(off, ts, line) for off, ts, _, line in state.events]
    drops = [(off, lines, nbytes, exact) for off, _, lines, nbytes, exact in state.drops]
    if gap is None:
        return _retain(events, drops, head, tail)
    if gap.head != head or len(events) - gap.head != tail:
        raise ValueError("a stream's ends do not match the retention asked for")
    return _retain_parts(events[:head], events[head:], gap.count, gap.off, drops)


def _block_ends(pod: str, container: str, exit_code: int | None) -> tuple[str, list[str]]:
    """A stream's block's first line and its last lines after its entries (docs/protocol.md section 7)."""
    return f"--- {pod}/{container} ---", [] if exit_code is None else [f"[exit code {exit_code}]"]


def block_of(pod: str, container: str, entries: list[Entry], exit_code: int | None) -> TextSpan:
    """A stream's block of `last_output` (docs/protocol.md section 7), as much of it as finalize keeps."""
    header, after = _block_ends(pod, container, exit_code)
    block = [header]
    block.extend(text for _, text, _ in entries)
    block.extend(after)
    return TextSpan.of(block, _SPAN_KEEP)


def block_of_texts(pod: str, container: str, exit_code: int | None, count: int, text_bytes: int,
                   texts: Callable[[bool], Iterator[str]]) -> TextSpan:
    """`block_of` for a stream of `count` line entries (no marker) whose texts add up to `text_bytes` UTF-8
    bytes, read lazily from either end (`texts(reverse)`)."""
    header, after = _block_ends(pod, container, exit_code)
    total = _utf8_len(header) + text_bytes + sum(map(_utf8_len, after)) + count + len(after)

    def parts(back: bool) -> Iterator[str]:
        if back:
            return itertools.chain(reversed(after), texts(True), (header,))
        return itertools.chain((header,), texts(False), after)

    return TextSpan.of_sized(total, parts, _SPAN_KEEP)


def summarize(state: StreamState, entries: list[Entry], marked: int) -> StreamSummary:
    """The stream's summary; `entries` and `marked` are `retained_entries(state, ...)`."""
    lines = sum(1 for e in entries if not e[2])
    exit_code = state.exit[1] if state.exit is not None else None
    return StreamSummary(
        pod=state.pod, container=state.container, entries=len(entries), lines=lines, marked=marked,
        eof=state.eof, exit_code=exit_code, phase=state.top[1],
        first_ts=entries[0][0] if entries else 0.0, block=block_of(state.pod, state.container, entries, exit_code),
    )


def summarize_light(state: StreamState, count: int) -> StreamSummary:
    """`summarize` of a stream of `count` events, every one kept (no more than head + tail), from its state
    with only its first event: the same summary but for `block` (None: pass two fills it in)."""
    marked = sum(d[2] for d in state.drops)
    return StreamSummary(
        pod=state.pod, container=state.container, entries=count + len(state.drops), lines=count, marked=marked,
        eof=state.eof, exit_code=state.exit[1] if state.exit is not None else None, phase=state.top[1],
        first_ts=state.events[0][1] if count else 0.0, block=None,
    )


def plan_artifacts(
    summaries: Iterable[StreamSummary],
    *,
    phase_table: Mapping[str, Mapping[str, Sequence[str]]] = DEFAULT_PHASE_TABLE,
    chunk_events: int = DEFAULT_CHUNK_EVENTS,
) -> Plan:
    """Which streams feed each phase, in artifact order, and each phase's step."""
    if chunk_events < 1:
        raise ValueError("chunk_events must be >= 1")
    streams = sorted(summaries, key=StreamSummary.sort_key)
    fed: dict[str, list[StreamSummary]] = {}
    primary: dict[str, list[StreamSummary]] = {}
    order: list[tuple[StreamSummary, list[str]]] = []
    for stream in streams:
        feeds, prim = _phases_of(stream, phase_table)
        order.append((stream, feeds))
        for phase in feeds:
            fed.setdefault(phase, []).append(stream)
            if phase in prim:
                primary.setdefault(phase, []).append(stream)
    plan = Plan(order=order, primary=primary)
    for phase in sorted(fed):
        members = fed[phase]
        plan.members[phase] = members
        plan.steps[phase] = {
            "last_output": "",
            "truncated": False,
            "lines": sum(s.lines for s in members),
            "omitted_lines": sum(s.marked for s in members),
            "chunks": -(-sum(s.entries for s in members) // chunk_events),
            "containers": [
                {"pod": s.pod, "container": s.container, "lines": s.lines, "exit_code": s.exit_code}
                for s in members
            ],
        }
    unfinished = sorted((s.pod, s.container) for s in streams if not s.eof)
    plan.incomplete_streams = [{"pod": p, "container": c} for p, c in unfinished]
    plan.complete = not unfinished
    if all(s.block is not None for s in streams):
        fill_last_output(plan)
    return plan


def fill_last_output(plan: Plan) -> None:
    """Each step's `last_output` and `truncated`, from its primary streams' blocks (all known by now)."""
    for phase, step in plan.steps.items():
        blocks = [s.block for s in plan.primary.get(phase, [])]
        if any(b is None for b in blocks):
            raise ValueError(f"a primary stream of {phase} was never read for its block")
        step["last_output"], step["truncated"] = _join_spans([b for b in blocks if b is not None])


@dataclass(slots=True)
class EncodedEntries:
    """A stream's retained entries already as chunk events' bytes (`aggregator.staging.encoded_entries`),
    and its block of `last_output`."""

    events: list[bytes]
    block: TextSpan

    def __len__(self) -> int:
        return len(self.events)


class Chunker:
    """A phase's chunks of events, fed stream by stream in plan order: only the open chunk is held."""

    def __init__(self, chunk_events: int) -> None:
        self.chunk_events = chunk_events
        self._open: list[ChunkEvent] = []

    def add(self, stream: StreamSummary, entries: list[Entry]) -> list[list[ChunkEvent]]:
        """The chunks that `entries` completed."""
        pod, container = stream.pod, stream.container
        return self.add_encoded([{"ts": ts, "pod": pod, "container": container, "line": text}
                                 for ts, text, _ in entries])

    def add_encoded(self, more: Sequence[ChunkEvent]) -> list[list[ChunkEvent]]:
        """The chunks that `more` (events as built, or their bytes) completed."""
        size = self.chunk_events
        events = self._open
        events += more
        full = len(events) - len(events) % size
        self._open = events[full:]
        return [events[i:i + size] for i in range(0, full, size)]

    def flush(self) -> list[list[ChunkEvent]]:
        """The last, partly filled chunk, if any."""
        done = [self._open] if self._open else []
        self._open = []
        return done


def build_artifacts(
    batches: Iterable[StoredBatch],
    *,
    phase_table: Mapping[str, Mapping[str, Sequence[str]]] = DEFAULT_PHASE_TABLE,
    head_lines: int = DEFAULT_HEAD_LINES,
    tail_lines: int = DEFAULT_TAIL_LINES,
    chunk_events: int = DEFAULT_CHUNK_EVENTS,
) -> Artifacts:
    """Merge one job's staged batches into per-phase chunks and step summaries, all in memory.

    The result depends only on the set of batches, not on their order. Finalize builds the same
    bytes stream by stream (`plan_artifacts`, `Chunker`) without holding every stream at once.
    """
    if head_lines < 0 or tail_lines < 0:
        raise ValueError("head_lines and tail_lines must be >= 0")
    by_stream: dict[tuple[str, str], list[StreamState]] = {}
    job_ids: set[str] = set()
    for batch in batches:
        job_ids.add(batch.job_id)
        by_stream.setdefault((batch.pod, batch.container), []).append(state_of_batch(batch))
    if len(job_ids) > 1:
        raise ValueError(f"batches of several jobs: {sorted(job_ids)}")
    entries_of: dict[tuple[str, str], list[Entry]] = {}
    summaries: list[StreamSummary] = []
    for stream, states in by_stream.items():
        state = merge_states(states)
        entries, marked = retained_entries(state, head_lines, tail_lines)
        entries_of[stream] = entries
        summaries.append(summarize(state, entries, marked))
    plan = plan_artifacts(summaries, phase_table=phase_table, chunk_events=chunk_events)
    result = Artifacts(steps=plan.steps, incomplete_streams=plan.incomplete_streams, complete=plan.complete)
    for phase, members in plan.members.items():
        chunker = Chunker(chunk_events)
        chunks = [c for s in members for c in chunker.add(s, entries_of[(s.pod, s.container)])]
        result.phases[phase] = chunks + chunker.flush()
    return result


def _phases_of(
    stream: StreamSummary, phase_table: Mapping[str, Mapping[str, Sequence[str]]]
) -> tuple[list[str], set[str]]:
    return phases_of(stream.container, stream.phase, phase_table)


def phases_of(
    container: str, default_phase: str, phase_table: Mapping[str, Mapping[str, Sequence[str]]]
) -> tuple[list[str], set[str]]:
    """The phases a container feeds (the stream's default phase when the table does not name it), and
    those it is primary in."""
    row = phase_table.get(container)
    if row is None:
        return [default_phase], set()
    feeds = list(dict.fromkeys(row.get("feeds", ())))
    return feeds, set(row.get("primary", ())) & set(feeds)


def _merge_events(states: Sequence[StreamState]) -> list[tuple[int, float, int, str]]:
    """The states' events, each `off` once (lowest `(ts, seq, line)`), ordered by `off`."""
    with_events = sorted((s.events for s in states if s.events), key=lambda e: (e[0][0], len(e)))
    joined: list[tuple[int, float, int, str]] = []
    for evs in with_events:
        joined.extend(evs)
    offs = [e[0] for e in joined]
    if all(map(operator.lt, offs, islice(offs, 1, None))):
        return joined  # the usual case: disjoint batches, no copies to choose among
    best: dict[int, tuple[float, int, str]] = {}
    for off, ts, seq, line in joined:
        cand = (ts, seq, line)
        cur = best.get(off)
        if cur is None or cand < cur:
            best[off] = cand
    return [(off, v[0], v[1], v[2]) for off, v in sorted(best.items())]


def _merge_drops(states: Sequence[StreamState]) -> list[tuple[int, int, int, int, bool]]:
    """The states' dropped reports, each `off` once (lowest `(seq, lines, bytes, exact)`), by `off`."""
    best: dict[int, tuple[int, int, int, bool]] = {}
    for s in states:
        for off, seq, lines, nbytes, exact in s.drops:
            cand = (seq, lines, nbytes, exact)
            cur = best.get(off)
            if cur is None or cand < cur:
                best[off] = cand
    return [(off, *v) for off, v in sorted(best.items())]


def _retain(
    events: list[tuple[int, float, str]], drops: list[tuple[int, int, int, bool]], head: int, tail: int
) -> tuple[list[Entry], int]:
    """Keep `head` first and `tail` last lines, place markers; return the entries and marker total."""
    n = len(events)
    if n <= head + tail:
        return _retain_parts(events, [], 0, 0, drops)
    return _retain_parts(events[:head], events[n - tail:], n - head - tail, events[head][0], drops)


def _retain_parts(
    head: list[tuple[int, float, str]], tail: list[tuple[int, float, str]], omitted: int, gap_off: int,
    drops: list[tuple[int, int, int, bool]],
) -> tuple[list[Entry], int]:
    """`_retain` from the kept lines alone: `head`, then `omitted` lines (the first at `gap_off`), then
    `tail`. Positions are those in the whole stream."""
    kept = head + tail
    head_end = len(head)
    tail_start = head_end + omitted
    n = tail_start + len(tail)

    # Each drop sits before the first line whose off is >= its own: position = that line's index.
    def position(off: int) -> int:
        p = bisect_left(kept, off, key=_OFF)
        if p < head_end or (p == head_end and (not omitted or off <= gap_off)):
            return p
        # after the first omitted line: among them (any such position places it the same), or in the tail
        return tail_start if p == head_end else p + omitted

    placed = [(position(off), dropped_marker(lines, nbytes, exact), lines) for off, lines, nbytes, exact in drops]
    marked = omitted + sum(p[2] for p in placed)
    raw: list[tuple[float | None, str, int]] = []
    di = 0
    for lo, hi in ((0, head_end), (tail_start, n)):
        for i in range(lo, hi):
            while di < len(placed) and placed[di][0] <= i:
                raw.append((None, placed[di][1], placed[di][2]))
                di += 1
            _, ts, line = kept[i if i < head_end else i - omitted]
            raw.append((ts, line, 0))
        if lo == 0:
            while di < len(placed) and placed[di][0] <= head_end:
                raw.append((None, placed[di][1], placed[di][2]))
                di += 1
            if omitted:
                raw.append((None, omitted_marker(omitted), omitted))
    raw.extend((None, text, count) for _, text, count in placed[di:])
    return _stamp_markers(raw), marked


def _stamp_markers(raw: list[tuple[float | None, str, int]]) -> list[Entry]:
    """Give each marker the ts of the line before it (after it, at the stream's start; else 0.0)."""
    first = next((ts for ts, _, count in raw if not count and ts is not None), 0.0)
    prev = first
    out: list[Entry] = []
    for ts, text, count in raw:
        if ts is None or count:
            out.append((prev, text, count))
        else:
            prev = ts
            out.append((ts, text, 0))
    return out


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "replace")


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(_utf8(text))


def last_output(text: str, *, limit: int = LAST_OUTPUT_LIMIT, half: int = LAST_OUTPUT_HALF) -> tuple[str, bool]:
    """docs/protocol.md section 7's cut of S, in UTF-8 bytes, never splitting a character."""
    data = _utf8(text)
    if len(data) <= limit:
        return data.decode("utf-8"), False
    _check_limits(limit, half)
    return _cut(data[: half + 1], data[-half:], len(data), half), True


def _last_output_parts(
    parts: list[str], *, limit: int = LAST_OUTPUT_LIMIT, half: int = LAST_OUTPUT_HALF
) -> tuple[str, bool]:
    """`last_output("\\n".join(parts))` without building S when it is large."""
    if not parts:
        return "", False
    return _join_spans([TextSpan.of(parts, max(limit, half + 1))], limit=limit, half=half)


def _join_spans(
    spans: Sequence[TextSpan], *, limit: int = LAST_OUTPUT_LIMIT, half: int = LAST_OUTPUT_HALF
) -> tuple[str, bool]:
    """`last_output` of the spans' blocks joined with "\\n"; each span keeps at least
    `max(limit, half + 1)` bytes at each end (`_SPAN_KEEP` by default)."""
    if not spans:
        return "", False
    total = sum(s.size for s in spans) + len(spans) - 1
    if total <= limit:
        return b"\n".join(s.head for s in spans).decode("utf-8"), False
    _check_limits(limit, half)
    return _cut(_span_edge(spans, half + 1), _span_edge(spans, half, back=True), total, half), True


def _span_edge(spans: Sequence[TextSpan], need: int, *, back: bool = False) -> bytes:
    """The first (or, with `back`, the last) `need` bytes of the spans' blocks joined with "\\n"."""
    pieces: list[bytes] = []
    size = -1
    for s in reversed(spans) if back else spans:
        pieces.append(s.tail if back else s.head)
        size += len(pieces[-1]) + 1
        if size >= need or not s.full:
            break
    if back:
        return b"\n".join(reversed(pieces))[-need:]
    return b"\n".join(pieces)[:need]


def _edge(parts: Iterable[str], need: int, *, back: bool = False) -> bytes:
    """The first (or, for reversed `parts` with `back`, the last) `need` bytes of the joined parts."""
    chunks: list[bytes] = []
    size = -1
    for part in parts:
        chunks.append(_utf8(part))
        size += len(chunks[-1]) + 1
        if size >= need:
            break
    if back:
        return b"\n".join(reversed(chunks))[-need:]
    return b"\n".join(chunks)[:need]


def _check_limits(limit: int, half: int) -> None:
    if half < 0 or 2 * half > limit:
        raise ValueError("last_output needs 0 <= 2 * half <= limit")


def _cut(head_window: bytes, tail_window: bytes, total: int, half: int) -> str:
    """Apply the cut given S's first `half + 1` bytes, its last `half` bytes and its size."""
    nl = head_window.rfind(b"\n", 0, half)
    if nl >= 0:
        head = head_window[:nl]
    else:
        end = half
        while end > 0 and head_window[end] & 0xC0 == 0x80:
            end -= 1
        head = head_window[:end]
    nl = tail_window.find(b"\n")
    if nl >= 0:
        tail = tail_window[nl + 1 :]
    else:
        start = 0
        while start < len(tail_window) and tail_window[start] & 0xC0 == 0x80:
            start += 1
        tail = tail_window[start:]
    omitted = total - len(head) - len(tail)
    return head.decode("utf-8") + f"\n[... {omitted} bytes omitted ...]\n" + tail.decode("utf-8")


def keep_longer_existing(steps: dict[str, dict[str, Any]], existing: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """A copy of `steps` where an `existing` last_output longer in UTF-8 bytes replaces the new one.

    Only `last_output` changes (`truncated` still describes the new build). Phases this build did
    not produce are not added: a step needs counts only a build gives. Non-string values are ignored.
    """
    out = {phase: dict(step) for phase, step in steps.items()}
    for phase, text in existing.items():
        step = out.get(phase)
        if step is None or not isinstance(text, str):
            continue
        if len(_utf8(text)) > len(_utf8(str(step.get("last_output", "")))):
            step["last_output"] = text
    return out


def chunk_body(job_id: str, phase: str, seq: int, events: list[ChunkEvent]) -> bytes:
    """One chunk artifact's bytes: keys in the order of docs/protocol.md section 6, events as built (or
    their bytes, which are what orjson writes for them)."""
    doc = {"job_id": job_id, "phase": phase, "seq": seq, "events": events}
    if not any(isinstance(e, bytes) for e in events):
        return orjson.dumps(doc)
    doc["events"] = []
    return b"".join((orjson.dumps(doc)[:-3], b"[", b",".join(
        e if isinstance(e, bytes) else orjson.dumps(e) for e in events), b"]}"))


def summary_body(result: dict[str, Any]) -> bytes:
    """summary.json's bytes: the key order of docs/protocol.md section 7 (unknown keys after, sorted), phases sorted by name.

    The same result gives the same bytes however its dicts were assembled.
    """
    doc = _ordered(result, _SUMMARY_KEYS)
    streams = doc.get("incomplete_streams")
    if isinstance(streams, list):
        doc["incomplete_streams"] = [_ordered(s, _STREAM_KEYS) for s in streams]
    steps = doc.get("steps")
    if isinstance(steps, dict):
        doc["steps"] = {phase: _ordered_step(steps[phase]) for phase in sorted(steps)}
    return orjson.dumps(doc)


def _ordered_step(step: Any) -> Any:
    step = _ordered(step, _STEP_KEYS)
    if isinstance(step, dict) and isinstance(step.get("containers"), list):
        step["containers"] = [_ordered(c, _CONTAINER_KEYS) for c in step["containers"]]
    return step


def _ordered(value: Any, keys: Sequence[str]) -> Any:
    if not isinstance(value, dict):
        return value
    out = {k: value[k] for k in keys if k in value}
    out.update((k, value[k]) for k in sorted(k for k in value if k not in out))
    return out
