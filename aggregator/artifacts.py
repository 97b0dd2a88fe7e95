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

import operator
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
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

#: One artifact entry of a stream: (ts, text, marker_count); marker_count is 0 for a line event.
Entry = tuple[float, str, int]


@dataclass
class Artifacts:
    """What finalize writes and answers, before chunks get their seq numbers."""

    phases: dict[str, list[list[dict[str, Any]]]] = field(default_factory=dict)
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    incomplete_streams: list[dict[str, str]] = field(default_factory=list)
    complete: bool = True


@dataclass(slots=True)
class _Stream:
    pod: str
    container: str
    entries: list[Entry]
    lines: int
    marked: int
    eof: bool
    exit_code: int | None
    phase: str

    def sort_key(self) -> tuple[int, float, str, str]:
        if self.lines:
            return (0, self.entries[0][0], self.pod, self.container)
        return (1, 0.0, self.pod, self.container)


def build_artifacts(
    batches: Iterable[StoredBatch],
    *,
    phase_table: Mapping[str, Mapping[str, Sequence[str]]] = DEFAULT_PHASE_TABLE,
    head_lines: int = DEFAULT_HEAD_LINES,
    tail_lines: int = DEFAULT_TAIL_LINES,
    chunk_events: int = DEFAULT_CHUNK_EVENTS,
) -> Artifacts:
    """Merge one job's staged batches into per-phase chunks and step summaries.

    The result depends only on the set of batches, not on their order.
    """
    if head_lines < 0 or tail_lines < 0:
        raise ValueError("head_lines and tail_lines must be >= 0")
    if chunk_events < 1:
        raise ValueError("chunk_events must be >= 1")
    by_stream: dict[tuple[str, str], list[StoredBatch]] = {}
    job_ids: set[str] = set()
    for batch in batches:
        job_ids.add(batch.job_id)
        by_stream.setdefault((batch.pod, batch.container), []).append(batch)
    if len(job_ids) > 1:
        raise ValueError(f"batches of several jobs: {sorted(job_ids)}")

    streams = [_build_stream(pod, ctr, bs, head_lines, tail_lines) for (pod, ctr), bs in by_stream.items()]
    streams.sort(key=_Stream.sort_key)

    fed: dict[str, list[_Stream]] = {}
    primary: dict[str, list[_Stream]] = {}
    for stream in streams:
        feeds, prim = _phases_of(stream, phase_table)
        for phase in feeds:
            fed.setdefault(phase, []).append(stream)
            if phase in prim:
                primary.setdefault(phase, []).append(stream)

    result = Artifacts()
    for phase in sorted(fed):
        members = fed[phase]
        events = [
            {"ts": ts, "pod": s.pod, "container": s.container, "line": text}
            for s in members
            for ts, text, _ in s.entries
        ]
        chunks = [events[i : i + chunk_events] for i in range(0, len(events), chunk_events)]
        text, truncated = _last_output_parts(_summary_parts(primary.get(phase, [])))
        result.phases[phase] = chunks
        result.steps[phase] = {
            "last_output": text,
            "truncated": truncated,
            "lines": sum(s.lines for s in members),
            "omitted_lines": sum(s.marked for s in members),
            "chunks": len(chunks),
            "containers": [
                {"pod": s.pod, "container": s.container, "lines": s.lines, "exit_code": s.exit_code}
                for s in members
            ],
        }
    unfinished = sorted((s.pod, s.container) for s in streams if not s.eof)
    result.incomplete_streams = [{"pod": p, "container": c} for p, c in unfinished]
    result.complete = not unfinished
    return result


def _phases_of(
    stream: _Stream, phase_table: Mapping[str, Mapping[str, Sequence[str]]]
) -> tuple[list[str], set[str]]:
    row = phase_table.get(stream.container)
    if row is None:
        return [stream.phase], set()
    feeds = list(dict.fromkeys(row.get("feeds", ())))
    return feeds, set(row.get("primary", ())) & set(feeds)


def _build_stream(pod: str, container: str, batches: list[StoredBatch], head: int, tail: int) -> _Stream:
    events = _merge_events(batches)
    drops = _merge_drops(batches)
    entries, marked = _retain(events, drops, head, tail)
    top = max(batches, key=lambda b: (b.seq, b.phase))
    coded = [(b.seq, b.exit_code) for b in batches if b.exit_code is not None]
    return _Stream(
        pod=pod,
        container=container,
        entries=entries,
        lines=sum(1 for e in entries if not e[2]),
        marked=marked,
        eof=any(b.eof for b in batches),
        exit_code=max(coded)[1] if coded else None,
        phase=top.phase,
    )


def _merge_events(batches: list[StoredBatch]) -> list[tuple[int, float, str]]:
    """A stream's events, each `off` once, ordered by `off`."""
    with_events = sorted((b for b in batches if b.events), key=lambda b: (b.events[0][0], len(b.events)))
    joined: list[tuple[int, float, str]] = []
    for b in with_events:
        joined.extend(b.events)
    offs = [e[0] for e in joined]
    if all(map(operator.lt, offs, islice(offs, 1, None))):
        return joined  # the usual case: disjoint batches, no copies to choose among
    best: dict[int, tuple[float, int, str]] = {}
    for b in batches:
        seq = b.seq
        for off, ts, line in b.events:
            cand = (ts, seq, line)
            cur = best.get(off)
            if cur is None or cand < cur:
                best[off] = cand
    return [(off, v[0], v[2]) for off, v in sorted(best.items())]


def _merge_drops(batches: list[StoredBatch]) -> list[tuple[int, int, int, bool]]:
    """A stream's dropped reports as (off, lines, bytes, exact), each `off` once, ordered by `off`."""
    best: dict[int, tuple[int, int, int, bool]] = {}
    for b in batches:
        d = b.dropped
        if d is None or d.lines <= 0:
            continue
        cand = (b.seq, d.lines, d.bytes, d.exact)
        cur = best.get(d.off)
        if cur is None or cand < cur:
            best[d.off] = cand
    return [(off, v[1], v[2], v[3]) for off, v in sorted(best.items())]


def _retain(
    events: list[tuple[int, float, str]], drops: list[tuple[int, int, int, bool]], head: int, tail: int
) -> tuple[list[Entry], int]:
    """Keep `head` first and `tail` last lines, place markers; return the entries and marker total."""
    n = len(events)
    if n > head + tail:
        head_end, tail_start = head, n - tail
    else:
        head_end = tail_start = n
    omitted = tail_start - head_end
    # Each drop sits before the first line whose off is >= its own: position = that line's index.
    placed = [
        (bisect_left(events, off, key=_OFF), dropped_marker(lines, nbytes, exact), lines)
        for off, lines, nbytes, exact in drops
    ]
    marked = omitted + sum(p[2] for p in placed)
    raw: list[tuple[float | None, str, int]] = []
    di = 0
    for lo, hi in ((0, head_end), (tail_start, n)):
        for i in range(lo, hi):
            while di < len(placed) and placed[di][0] <= i:
                raw.append((None, placed[di][1], placed[di][2]))
                di += 1
            _, ts, line = events[i]
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


def _summary_parts(primaries: list[_Stream]) -> list[str]:
    """The lines of S: each primary stream's block, all to be joined with "\\n"."""
    parts: list[str] = []
    for s in primaries:
        parts.append(f"--- {s.pod}/{s.container} ---")
        parts.extend(text for _, text, _ in s.entries)
        if s.exit_code is not None:
            parts.append(f"[exit code {s.exit_code}]")
    return parts


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
    total = sum(map(_utf8_len, parts)) + len(parts) - 1
    if total <= limit:
        return last_output("\n".join(parts), limit=limit, half=half)
    _check_limits(limit, half)
    return _cut(_edge(parts, half + 1), _edge(parts[::-1], half, back=True), total, half), True


def _edge(parts: list[str], need: int, *, back: bool = False) -> bytes:
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


def chunk_body(job_id: str, phase: str, seq: int, events: list[dict[str, Any]]) -> bytes:
    """One chunk artifact's bytes: keys in the order of docs/protocol.md section 6, events as built."""
    return orjson.dumps({"job_id": job_id, "phase": phase, "seq": seq, "events": events})


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
