"""Reading a job's logs back (docs/protocol.md section 10): staged streams merged by finalize's own
rules (`StagingReader.load`, `retained_entries`, `plan_artifacts`), or the chunks finalize wrote, in
artifact order and a stream (or a chunk) at a time, so memory is about one stream whatever the job's size.

Positions within a stream: the line at byte `off` is at `2 * off + 1`, a dropped marker reported at `off`
at `2 * off` (it comes just before the line there). Positions only grow as a stream grows, so a cursor or a
follower's marks stay valid while lines keep arriving.

Staging holds every line (no head/tail retention: a reader wants them all, and a live stream cannot know
which lines retention will drop); the chunks hold what finalize retained. Both agree for streams of at most
`HEAD_LINES + TAIL_LINES` lines.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final

import orjson

from aggregator.artifacts import (
    Plan,
    StreamState,
    StreamSummary,
    phases_of,
    plan_artifacts,
    retained_entries,
    summarize,
)
from aggregator.checks import is_int
from aggregator.config import AggregatorConfig
from aggregator.errors import BadRequest, JobNotFound
from aggregator.fanout import run_weighted
from aggregator.finalize.job import FINALIZE_READ_WEIGHT
from aggregator.finalize.manifest import decode_manifest
from aggregator.finalize.streams import StagedStream, StagingReader, group_staged
from aggregator.storage import Store
from aggregator.storage.layout import logs_prefix, manifest_key, staging_prefix, summary_key

#: How often pass one reads again the streams a concurrent finalize compacted meanwhile.
RESCANS: Final = 3
#: Full entries of streams read in pass one kept for pass two (about 200 bytes each); beyond, re-read.
CACHE_ENTRIES: Final = 200_000

Stream = tuple[str, str]
#: One entry of a stream: (position, ts, text).
Positioned = tuple[int, float, str]


@dataclass(frozen=True, slots=True)
class Selection:
    """Which events a reader wants: filters by phase, pod, container, time (`since`, Unix seconds) and
    stream byte position (`position`: lines at or after that `off`)."""

    phase: str | None = None
    pod: str | None = None
    container: str | None = None
    since: float | None = None
    position: int | None = None

    def wants_stream(self, pod: str, container: str) -> bool:
        return (self.pod is None or pod == self.pod) and (self.container is None or container == self.container)

    def wants_entry(self, pos: int, ts: float) -> bool:
        if self.since is not None and ts < self.since:
            return False
        return self.position is None or pos >= 2 * self.position


@dataclass(frozen=True, slots=True)
class LogEvent:
    """One event as a reader gets it; `at` is where it lies (a cursor's content)."""

    phase: str
    pod: str
    container: str
    ts: float
    line: str
    at: tuple[Any, ...]

    def doc(self) -> dict[str, Any]:
        return {"phase": self.phase, "pod": self.pod, "container": self.container, "ts": self.ts,
                "line": self.line}


def positioned_entries(state: StreamState) -> list[Positioned]:
    """Every line of a merged stream and its dropped markers, as the artifacts would place them with no
    retention (the same code: `retained_entries`), each with its position."""
    entries, _ = retained_entries(state, len(state.events), 0)
    out: list[Positioned] = []
    lines, drops = iter(state.events), iter(state.drops)
    for ts, text, count in entries:
        pos = 2 * next(drops)[0] if count else 2 * next(lines)[0] + 1
        out.append((pos, ts, text))
    return out


def encode_cursor(at: Sequence[Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(list(at))).rstrip(b"=").decode("ascii")


def decode_cursor(text: str) -> tuple[Any, ...]:
    """A cursor's content; BadRequest for anything `encode_cursor` did not make."""
    try:
        at = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (binascii.Error, ValueError):
        raise BadRequest("cursor is not one this service gave") from None
    ok = isinstance(at, list) and (
        (len(at) == 5 and at[0] == "s" and all(isinstance(x, str) for x in at[1:4]) and is_int(at[4]))
        or (len(at) == 4 and at[0] == "c" and isinstance(at[1], str) and is_int(at[2]) and is_int(at[3])))
    if not ok:
        raise BadRequest("cursor is not one this service gave")
    return tuple(at)


@dataclass(slots=True)
class StreamInfo:
    """A stream's state as readers see it."""

    pod: str
    container: str
    phases: list[str]
    lines: int
    last_position: int | None
    last_ts: float | None
    eof: bool
    exit_code: int | None


@dataclass
class JobView:
    """A job's staged streams as read now (pass one): each stream's info and the plan finalize would make
    of them (artifact order, live `last_output`); entries come stream by stream (`entries`)."""

    job_id: str
    reader: StagingReader
    staged: dict[Stream, StagedStream]
    info: dict[Stream, StreamInfo]
    plan: Plan
    cache: dict[Stream, list[Positioned]] = field(default_factory=dict)

    def order(self, sel: Selection) -> list[tuple[str, Stream]]:
        """The selected streams in artifact order, each once: under `sel.phase`, else under the first phase
        (by name) it feeds."""
        phases = [sel.phase] if sel.phase is not None else sorted(self.plan.members)
        seen: set[Stream] = set()
        out: list[tuple[str, Stream]] = []
        for phase in phases:
            for s in self.plan.members.get(phase, []):
                key = (s.pod, s.container)
                if key not in seen and sel.wants_stream(*key):
                    seen.add(key)
                    out.append((phase, key))
        return out

    async def entries(self, stream: Stream) -> list[Positioned]:
        cached = self.cache.get(stream)
        if cached is not None:
            return cached
        loaded = await self.reader.load(self.staged[stream], compact=False)
        return [] if loaded is None else positioned_entries(loaded.state)

    def keys_of(self, stream: Stream) -> set[str]:
        s = self.staged[stream]
        return set(s.batches.values()) | {k for _, k in s.compacted}


async def view_job(store: Store, cfg: AggregatorConfig, job_id: str) -> JobView:
    """Pass one over the job's staging: every stream read (never compacted: only finalize writes) and
    summarised by finalize's rules, a few at a time; small jobs keep their entries for pass two.

    A finalize may compact a stream and delete the batches its object covers while we read them: the
    listing is taken again afterwards, and a stream whose newest compacted object changed is read again
    from the new listing (the object is written before any batch it covers is deleted)."""
    staged = group_staged(job_id, await store.list_keys(staging_prefix(job_id)))
    reader = StagingReader(store, job_id, cfg.read_concurrency)
    room = [CACHE_ENTRIES]
    view = JobView(job_id, reader, staged, {}, Plan())
    summaries: dict[Stream, StreamSummary] = {}

    async def scan(s: StagedStream) -> None:
        loaded = await reader.load(s, compact=False)
        key = (s.pod, s.container)
        if loaded is None:
            return
        state = loaded.state
        entries, marked = retained_entries(state, cfg.head_lines, cfg.tail_lines)
        summary = summarize(state, entries, marked)
        summaries[key] = summary
        feeds, _ = phases_of(s.container, summary.phase, cfg.phase_table)
        last = state.events[-1] if state.events else None
        view.info[key] = StreamInfo(
            s.pod, s.container, feeds, len(state.events), None if last is None else last[0],
            None if last is None else last[1], state.eof, summary.exit_code)
        old = view.cache.pop(key, None)
        room[0] += len(old) if old is not None else 0
        if len(state.events) <= room[0]:
            room[0] -= len(state.events)
            view.cache[key] = positioned_entries(state)

    todo = list(staged.values())
    for _ in range(RESCANS):
        await run_weighted(FINALIZE_READ_WEIGHT, ((s.weight(), partial(scan, s)) for s in todo))
        again = group_staged(job_id, await store.list_keys(staging_prefix(job_id)))
        todo = [s for key, s in again.items() if key in staged and s.best() != staged[key].best()]
        for s in todo:
            staged[(s.pod, s.container)] = s
        if not todo:
            break
    view.plan = plan_artifacts(summaries.values(), phase_table=cfg.phase_table, chunk_events=cfg.chunk_events)
    return view


async def staged_events(view: JobView, sel: Selection, after: tuple[Any, ...] | None = None,
                        ) -> AsyncIterator[LogEvent]:
    """The selected events from staging in artifact order, after cursor content `after` (`"s"` kind)."""
    order = view.order(sel)
    start, after_pos = 0, -1
    if after is not None:
        if after[0] != "s":
            raise BadRequest("this cursor is for the chunks, not staging")
        where = (after[1], (after[2], after[3]))
        if where not in order:
            raise BadRequest("cursor does not match this selection")
        start, after_pos = order.index(where), after[4]
    for i in range(start, len(order)):
        phase, stream = order[i]
        for pos, ts, text in await view.entries(stream):
            if (i > start or pos > after_pos) and sel.wants_entry(pos, ts):
                yield LogEvent(phase, stream[0], stream[1], ts, text, ("s", phase, stream[0], stream[1], pos))


async def staged_events_backwards(view: JobView, sel: Selection) -> AsyncIterator[LogEvent]:
    """The selected events from staging, last first."""
    for phase, stream in reversed(view.order(sel)):
        for pos, ts, text in reversed(await view.entries(stream)):
            if sel.wants_entry(pos, ts):
                yield LogEvent(phase, stream[0], stream[1], ts, text, ("s", phase, stream[0], stream[1], pos))


@dataclass
class ChunkView:
    """A finalized job's chunks: per phase, our chunk numbers in order, and the streams to skip in each
    phase (those an earlier phase already gave) when no phase is selected."""

    store: Store
    job_id: str
    chunks: dict[str, list[int]]
    skip: dict[str, set[Stream]]

    def phases(self, sel: Selection) -> list[str]:
        return [sel.phase] if sel.phase is not None else sorted(self.chunks)

    async def events(self, phase: str, seq: int, sel: Selection) -> list[LogEvent]:
        data = await self.store.get(f"{logs_prefix(self.job_id)}{phase}/{seq}.json")
        if data is None:
            return []
        try:
            body = orjson.loads(data)
            events = body["events"]
        except (ValueError, KeyError, TypeError):
            return []
        skip = set() if sel.phase is not None else self.skip.get(phase, set())
        out = []
        for i, ev in enumerate(events):
            try:
                pod, container, ts, line = ev["pod"], ev["container"], float(ev["ts"]), ev["line"]
            except (KeyError, TypeError, ValueError):
                continue
            if (pod, container) in skip or not sel.wants_stream(pod, container):
                continue
            if sel.since is not None and ts < sel.since:
                continue
            out.append(LogEvent(phase, pod, container, ts, str(line), ("c", phase, seq, i)))
        return out


async def finalized_summary(store: Store, job_id: str) -> dict[str, Any] | None:
    """The job's summary.json, or None before its first finalize (or when unreadable)."""
    data = await store.get(summary_key(job_id))
    if data is None:
        return None
    try:
        doc = orjson.loads(data)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("steps"), dict) else None


async def view_chunks(store: Store, job_id: str, summary: dict[str, Any]) -> ChunkView:
    ours = decode_manifest(await store.get(manifest_key(job_id)))
    prefix = logs_prefix(job_id)
    chunks: dict[str, list[int]] = {}
    for key in await store.list_keys(prefix):
        if ours and key not in ours:
            continue
        phase, _, name = key[len(prefix):].partition("/")
        if name.endswith(".json") and name[:-5].isdigit():
            chunks.setdefault(phase, []).append(int(name[:-5]))
    seen: set[Stream] = set()
    skip: dict[str, set[Stream]] = {}
    for phase in sorted(chunks):
        skip[phase] = set(seen)
        step = summary["steps"].get(phase)
        for c in step.get("containers", []) if isinstance(step, dict) else []:
            if isinstance(c, dict):
                seen.add((str(c.get("pod")), str(c.get("container"))))
    return ChunkView(store, job_id, {p: sorted(v) for p, v in chunks.items()}, skip)


async def chunk_events(view: ChunkView, sel: Selection, after: tuple[Any, ...] | None = None,
                       ) -> AsyncIterator[LogEvent]:
    """The selected events of the chunks in order, after cursor content `after` (`"c"` kind)."""
    if after is not None and after[0] != "c":
        raise BadRequest("this cursor is for staging, not the chunks")
    phases = view.phases(sel)
    for phase in phases:
        if after is not None and phase < after[1] and after[1] in phases:
            continue
        for seq in view.chunks.get(phase, []):
            if after is not None and phase == after[1] and seq < after[2]:
                continue
            for ev in await view.events(phase, seq, sel):
                if after is not None and phase == after[1] and seq == after[2] and ev.at[3] <= after[3]:
                    continue
                yield ev


async def chunk_events_backwards(view: ChunkView, sel: Selection) -> AsyncIterator[LogEvent]:
    for phase in reversed(view.phases(sel)):
        for seq in reversed(view.chunks.get(phase, [])):
            for ev in reversed(await view.events(phase, seq, sel)):
                yield ev


@dataclass
class Page:
    """A page of events; `cursor` is after its last event (None when it has none); `more` when the
    selection has events past it."""

    events: list[LogEvent]
    cursor: str | None
    more: bool


async def take_page(events: AsyncIterator[LogEvent], limit: int) -> Page:
    out: list[LogEvent] = []
    more = False
    async for ev in events:
        if len(out) == limit:
            more = True
            break
        out.append(ev)
    await _close(events)
    return Page(out, encode_cursor(out[-1].at) if out else None, more)


async def take_tail(events_backwards: AsyncIterator[LogEvent], n: int) -> Page:
    out: list[LogEvent] = []
    if n > 0:
        async for ev in events_backwards:
            out.append(ev)
            if len(out) == n:
                break
    await _close(events_backwards)
    out.reverse()
    return Page(out, encode_cursor(out[-1].at) if out else None, False)


async def _close(it: AsyncIterator[LogEvent]) -> None:
    aclose = getattr(it, "aclose", None)
    if aclose is not None:
        await aclose()


async def job_exists(store: Store, job_id: str) -> None:
    """JobNotFound when nothing at all is stored for the job."""
    if await store.list_keys(staging_prefix(job_id)) or await store.get(summary_key(job_id)) is not None:
        return
    raise JobNotFound(f"nothing is stored for job {job_id}")
