"""`finalize_job`: wait for eof, then, under the job's lock, write the chunks, the manifest and the summary.

Order matters for other writers and for replicas (docs/design.md, "Finalize and concurrent replicas"):
list `logs/` before reading the manifest; write the manifest (old and new names) before the chunks;
delete our stale chunks; write the manifest again with only the new names; then `summary.json`.
The same staging contents give the same bytes on every run and on every replica. Every write under the
lock runs through `aggregator.fanout`: the lock is released only once each write we started has settled.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

from aggregator.adaptive import AdaptiveLimit
from aggregator.artifacts import (
    Chunker,
    ChunkEvent,
    EncodedEntries,
    Entry,
    Gap,
    Plan,
    StreamState,
    StreamSummary,
    block_of,
    chunk_body,
    fill_last_output,
    keep_longer_existing,
    plan_artifacts,
    retained_entries,
    state_of_batch,
    summarize,
    summarize_light,
    summary_body,
)
from aggregator.config import AggregatorConfig
from aggregator.errors import JobNotFound, StoreError
from aggregator.fanout import Behind, Budget, cpu_thread, cpu_work, run_bounded, run_weighted
from aggregator.finalize.lock import JobLock
from aggregator.finalize.manifest import decode_manifest, encode_manifest, first_free_seqs
from aggregator.finalize.streams import EVENT_BYTES, Overtaken, StagedStream, StagingReader, group_staged
from aggregator.staging import decode_batch, encoded_entries
from aggregator.storage import Store
from aggregator.storage.base import SweepsTemp, delete_keys, put_keys
from aggregator.storage.layout import (
    chunk_key,
    logs_prefix,
    manifest_key,
    staging_prefix,
    steps_prefix,
    stream_states,
    summary_key,
)

log = logging.getLogger("aggregator.finalize")

T = TypeVar("T")
U = TypeVar("U")

#: Retained entries pass one keeps in memory for pass two (about 200 bytes each); beyond, streams are
#: read again in pass two, so memory holds about a window of streams, not the job.
FINALIZE_CACHE_ENTRIES = 200_000
#: Staged batches (or the batches a compacted object covers: about as many events) in memory at once,
#: across the streams read together: a stream of 100 full batches does not read beside 15 others.
FINALIZE_READ_WEIGHT = 256
#: What a finalize's per-stream bookkeeping (a staging key, a summary) costs, in `cpu_work`'s bytes: a
#: job of thousands of streams lists, groups, plans and summarises in a worker thread, off the loop
#: (20,000 streams: 50-200 ms each, which other jobs' ingests would otherwise wait out).
KEY_BYTES = 100
#: Rendered chunks handed to the store at once. Bigger batches finalize faster on the local store (a
#: syncfs and a folder fsync per batch; full chatty in process: 1 MiB 30.6-34.3 s, 4 MiB 24.8-28.2 s,
#: 8 MiB 22.9-23.7 s).
WRITE_BATCH_BYTES = 8 * 1024 * 1024
#: Rendered chunks not yet written, across a replica's finalizes (`FinalizeBudget.writes`): one batch
#: filling while the one before is written.
FINALIZE_WRITE_BYTES = 2 * WRITE_BATCH_BYTES


@dataclass(slots=True)
class FinalizeBudget:
    """What every finalize on a replica shares (`app.py` makes one; `finalize_job` without one makes its
    own): the staged batches' worth of streams read at once (`FINALIZE_READ_WEIGHT`), which background
    compactions draw on too, and the retained entries cached between the passes
    (`FINALIZE_CACHE_ENTRIES`), and the bytes of rendered chunks waiting for their write
    (`FINALIZE_WRITE_BYTES`). So four finalizes at once hold about what one alone may."""

    reads: Budget = field(default_factory=lambda: Budget(FINALIZE_READ_WEIGHT))
    cache: Budget = field(default_factory=lambda: Budget(FINALIZE_CACHE_ENTRIES))
    writes: Budget = field(default_factory=lambda: Budget(FINALIZE_WRITE_BYTES))


def _not_found(job_id: str) -> JobNotFound:
    return JobNotFound(f"nothing is stored for job {job_id}")


async def wait_for_eof(store: Store, job_id: str, wait_seconds: float, poll: float) -> list[str]:
    """Poll staging until every known stream has an eof object or time is up; the last listing."""
    deadline = time.monotonic() + wait_seconds
    while True:
        keys = await store.list_keys(staging_prefix(job_id))
        states = await cpu_work(len(keys) * KEY_BYTES, stream_states, job_id, keys)
        if not states:
            raise _not_found(job_id)
        left = deadline - time.monotonic()
        if all(states.values()) or left <= 0:
            return keys
        await asyncio.sleep(min(poll, left))


@dataclass(slots=True)
class Scanned:
    """Pass one's result for a stream: its summary, where it is stored, and its entries if cached."""

    summary: StreamSummary
    sources: list[str]
    entries: list[Entry] | None
    redundant: list[str]
    #: staged batches its pass-one read covered (memory it takes to read it again, roughly)
    weight: int


def summarize_stream(state: StreamState, cfg: AggregatorConfig, gap: Gap | None) -> tuple[list[Entry], StreamSummary]:
    """A stream's retained entries and its summary (pure, CPU: may run in a thread)."""
    entries, marked = retained_entries(state, cfg.head_lines, cfg.tail_lines, gap)
    return entries, summarize(state, entries, marked)


async def scan_streams(reader: StagingReader, job_id: str, keys: list[str], cfg: AggregatorConfig,
                       budget: FinalizeBudget, cached: list[int]) -> dict[tuple[str, str], Scanned]:
    """Pass one: read (and compact) each stream, keep its summary; keep its entries while the budget's
    cache has room (`cached[0]` counts what this finalize took of it), else pass two reads it again. A big
    stream kept whole is read for its first line and count alone (`light`): pass two decodes it once."""

    async def scan(stream: StagedStream) -> tuple[tuple[str, str], Scanned] | None:
        loaded = await reader.load_stream(stream, ends=(cfg.head_lines, cfg.tail_lines), light=True)
        if loaded is None:
            return None
        state = loaded.state
        if loaded.light is not None:  # kept whole: its entries (and block) come in pass two
            return (stream.pod, stream.container), Scanned(summarize_light(state, loaded.light), loaded.sources,
                                                          None, loaded.redundant, stream.weight())
        entries, summary = await cpu_work(len(state.events) * EVENT_BYTES, summarize_stream, state, cfg, loaded.gap)
        keep = budget.cache.try_take(len(entries))
        if keep:
            cached[0] += len(entries)
        return (stream.pod, stream.container), Scanned(summary, loaded.sources, entries if keep else None,
                                                      loaded.redundant, stream.weight())

    async def scan_lone(group: list[StagedStream]) -> list[tuple[tuple[str, str], Scanned] | None]:
        keys = [next(iter(s.batches.values())) for s in group]
        datas = await reader.get_many(keys)
        done = await cpu_thread(scan_lone_batches, job_id, cfg, group, datas)
        out: list[tuple[tuple[str, str], Scanned] | None] = []
        for stream, key, got in zip(group, keys, done, strict=True):
            if got is _GONE:  # compacted away meanwhile: the stream's own scan lists it again
                out.append(await scan(stream))
            elif isinstance(got, tuple):
                entries, summary = got
                keep = budget.cache.try_take(len(entries))
                if keep:
                    cached[0] += len(entries)
                out.append(((stream.pod, stream.container), Scanned(summary, [key], entries if keep else None, [], 1)))
        return out

    streams = (await cpu_work(len(keys) * KEY_BYTES, group_staged, job_id, keys)).values()
    lone = [s for s in streams if not s.compacted and len(s.batches) == 1]
    rest = [s for s in streams if s.compacted or len(s.batches) != 1]
    jobs: list[tuple[int, Callable[[], Awaitable[list[tuple[tuple[str, str], Scanned] | None]]]]] = [
        (len(g), partial(scan_lone, g)) for g in (lone[i:i + SCAN_GROUP] for i in range(0, len(lone), SCAN_GROUP))]
    jobs += [(s.weight(), partial(_listed, scan, s)) for s in rest]
    # At most twice the reads in flight: more tasks would only wait for the reader, and each one ready at
    # once is a turn of the loop that other jobs' ingests wait behind.
    found = await run_weighted(FINALIZE_READ_WEIGHT, jobs, budget.reads, most=2 * cfg.read_concurrency)
    return dict(f for part in found for f in part if f is not None)


async def _listed(fn: Callable[[T], Awaitable[U]], arg: T) -> list[U]:
    return [await fn(arg)]


#: One-batch streams read, decoded and summarised together, in one thread job per this many: a wide job's
#: 20,000 of them would otherwise be 20,000 tasks' turns of the loop, which other jobs' ingests wait behind.
SCAN_GROUP = 64
#: `scan_lone_batches`' mark for a batch gone when read.
_GONE = object()


def scan_lone_batches(job_id: str, cfg: AggregatorConfig, group: list[StagedStream],
                      datas: list[bytes | None]) -> list[tuple[list[Entry], StreamSummary] | object | None]:
    """Pass one for streams staged as one batch each (their bytes given): each one's retained entries and
    summary, as `StagingReader.load` and `summarize_stream` give them; `_GONE` when its batch was gone,
    None when it is unreadable (logged) or another job's. CPU: it runs in a thread."""
    out: list[tuple[list[Entry], StreamSummary] | object | None] = []
    for stream, data in zip(group, datas, strict=True):
        if data is None:
            out.append(_GONE)
            continue
        try:
            batch = decode_batch(data)
        except ValueError as e:
            log.error("unreadable staged batch skipped", extra={"fields": {
                "key": next(iter(stream.batches.values())), "error": str(e)}})
            out.append(None)
            continue
        out.append(None if batch.job_id != job_id else summarize_stream(state_of_batch(batch), cfg, None))
    return out


def weighted_windows(items: list[T], weight: Callable[[T], int], capacity: int, most: int) -> list[list[T]]:
    """`items` cut, in order, into runs of at most `most` whose weights add up to at most `capacity`
    (a heavier item alone)."""
    out: list[list[T]] = []
    run: list[T] = []
    used = 0
    for item in items:
        w = weight(item)
        if run and (used + w > capacity or len(run) >= most):
            out.append(run)
            run, used = [], 0
        run.append(item)
        used += w
    if run:
        out.append(run)
    return out


def chunk_writes(chunkers: Mapping[str, Chunker], job_id: str, seqs: dict[str, int],
                 streams: list[tuple[StreamSummary, list[str], list[Entry] | EncodedEntries]],
                 last: bool) -> list[tuple[str, bytes]]:
    """The chunks (key, bytes) that `streams`' entries complete in each phase they feed, numbered on from
    `seqs` (advanced); with `last`, each phase's open chunk too. A stream read `light` in pass one gets its
    block here. CPU on every retained line: it runs off the loop (`cpu_work`)."""
    out: list[tuple[str, bytes]] = []

    def emit(phase: str, chunks: list[list[ChunkEvent]]) -> None:
        for chunk in chunks:
            out.append((chunk_key(job_id, phase, seqs[phase]), chunk_body(job_id, phase, seqs[phase], chunk)))
            seqs[phase] += 1

    for summary, phases, entries in streams:
        if isinstance(entries, EncodedEntries):
            summary.block = summary.block or entries.block
            for phase in phases:
                emit(phase, chunkers[phase].add_encoded(entries.events))
            continue
        if summary.block is None:
            summary.block = block_of(summary.pod, summary.container, entries, summary.exit_code)
        for phase in phases:
            emit(phase, chunkers[phase].add(summary, entries))
    if last:
        for phase, chunker in chunkers.items():
            emit(phase, chunker.flush())
    return out


async def write_chunks(store: Store, reader: StagingReader, cfg: AggregatorConfig, job_id: str, plan: Plan,
                       scanned: Mapping[tuple[str, str], Scanned], first: Mapping[str, int],
                       budget: FinalizeBudget) -> dict[str, int]:
    """Pass two: every stream's entries once, in artifact order (`Plan.order`), `read_concurrency` streams at
    a time, into the chunks of each phase it feeds, written as they fill. The chunks written per phase."""

    async def entries_of(s: StreamSummary) -> list[Entry] | EncodedEntries:
        found = scanned[(s.pod, s.container)]
        if found.entries is not None:
            return found.entries
        ends = (cfg.head_lines, cfg.tail_lines)
        try:
            if s.block is None:  # read light in pass one: one compacted object, which may need no decoding
                data = await reader.get(found.sources[0])
                encoded = await cpu_work(len(data), encoded_entries, data, job_id, *ends)
                if encoded is not None:
                    return encoded
                got = await reader.reload(found.sources, ends, data)
            else:
                got = await reader.reload(found.sources, ends)
        except Overtaken:  # an ingest-side compaction replaced them: what covers them is listed now
            again = await reader.load_stream(await reader.relist(s.pod, s.container), ends=ends)
            got = None if again is None else (again.state, again.gap)
        if got is None:
            raise StoreError(f"staging of {s.pod}/{s.container} vanished during finalize")
        state, gap = got
        return (await cpu_work(len(state.events) * EVENT_BYTES, retained_entries, state, cfg.head_lines,
                               cfg.tail_lines, gap))[0]

    chunkers = {phase: Chunker(cfg.chunk_events) for phase in plan.steps}
    seqs = {phase: first.get(phase, 0) for phase in plan.steps}

    def weight(item: tuple[StreamSummary, list[str]]) -> int:
        return scanned[(item[0].pod, item[0].container)].weight

    windows = await cpu_work(len(plan.order) * KEY_BYTES, weighted_windows, plan.order, weight,
                             budget.reads.capacity, cfg.read_concurrency)
    # Chunks go to the store in batches of about WRITE_BATCH_BYTES, written while the next windows are
    # read and rendered (one batch behind: the writes and the rendering each keep a core busy), so what a
    # store pays per call (the local store's syncfs and folder fsync) is paid per batch, not per window.
    # Rendered chunks hold their bytes of the replica's `writes` budget until written; a finalize sends
    # what it holds before it waits for more, so every byte held is on its way out. Reads and writes
    # share the reader's gate: at most `read_concurrency` requests at once, as before the overlap.
    pending: list[tuple[str, bytes]] = []
    size = held = 0

    async def put_batch(items: list[tuple[str, bytes]], taken: int) -> None:
        try:
            await put_keys(store, items, cfg.read_concurrency, reader.gate)
        finally:
            budget.writes.give(taken)

    async def flush() -> None:
        nonlocal pending, size, held
        items, taken = pending, held
        pending, size, held = [], 0, 0
        try:
            await behind.start(partial(put_batch, items, taken))
        except BaseException:  # the write before failed (or we were cancelled): this one never started
            budget.writes.give(taken)
            raise

    try:
        async with Behind() as behind:
            for n, part in enumerate(windows, 1):
                uncached = sum(weight(item) for item in part
                               if scanned[(item[0].pod, item[0].container)].entries is None)
                async with budget.reads.hold(uncached):  # the window's re-read streams, until rendered
                    loaded = await run_bounded(cfg.read_concurrency, (partial(entries_of, s) for s, _ in part))
                    writes = await cpu_work(sum(map(len, loaded)) * EVENT_BYTES, chunk_writes, chunkers, job_id,
                                            seqs, [(s, phases, e) for (s, phases), e in zip(part, loaded, strict=True)],
                                            n == len(windows))
                    del loaded
                if writes:
                    nbytes = sum(len(body) for _, body in writes)
                    want = budget.writes.fit(nbytes)
                    if not budget.writes.try_take(want):
                        if pending:
                            await flush()
                        want = await budget.writes.take(want)
                    pending += writes
                    size += nbytes
                    held += want
                if pending and (size >= WRITE_BATCH_BYTES or n == len(windows)):
                    await flush()
    finally:
        if held:
            budget.writes.give(held)
    return {phase: seqs[phase] - first.get(phase, 0) for phase in plan.steps}


async def clean_staging(store: Store, cfg: AggregatorConfig, job_id: str, scanned: Iterable[Scanned],
                        gate: AdaptiveLimit | None = None) -> int:
    """After a successful finalize: delete what compacted objects make redundant (unless retention is
    `all`) and stray temp files; how many objects went. Failures are logged: the artifacts stand."""
    redundant = [k for s in scanned for k in s.redundant] if cfg.staging_retention == "compacted" else []
    try:
        await delete_keys(store, redundant, cfg.read_concurrency, gate)
        swept = await store.sweep_temp(steps_prefix(job_id), cfg.temp_max_age) if isinstance(store, SweepsTemp) else 0
    except StoreError as e:
        log.warning("staging cleanup failed", extra={"fields": {"job_id": job_id, "error": str(e)}})
        return 0
    return len(redundant) + swept


async def finalize_job(store: Store, cfg: AggregatorConfig, job_id: str, *, wait_seconds: float,
                       existing_last_output: Mapping[str, str], budget: FinalizeBudget | None = None) -> bytes:
    """Build and write the job's artifacts; the summary.json bytes (the response body). `budget`: the
    replica's, shared with its other finalizes (else this finalize's own)."""
    budget = budget or FinalizeBudget()
    cached = [0]
    try:
        return await _finalize_job(store, cfg, job_id, wait_seconds, existing_last_output, budget, cached)
    finally:
        budget.cache.give(cached[0])


async def _finalize_job(store: Store, cfg: AggregatorConfig, job_id: str, wait_seconds: float,
                        existing_last_output: Mapping[str, str], budget: FinalizeBudget, cached: list[int]) -> bytes:
    staged = await wait_for_eof(store, job_id, wait_seconds, cfg.poll_seconds)
    async with JobLock(store, job_id, ttl=cfg.lock_ttl, wait=cfg.lock_wait, poll=cfg.poll_seconds,
                       renew=cfg.lock_renew) as lock:
        listed = await store.list_keys(logs_prefix(job_id))
        old_ours = decode_manifest(await store.get(manifest_key(job_id)))
        reader = StagingReader(store, job_id, cfg.read_concurrency, adaptive=True)
        if lock.waited:  # another finalize ran meanwhile: what was staged is listed again
            staged = await store.list_keys(staging_prefix(job_id))
        scanned = await scan_streams(reader, job_id, staged, cfg, budget, cached)
        if not scanned:
            raise _not_found(job_id)
        plan = await cpu_work(len(scanned) * KEY_BYTES, partial(
            plan_artifacts, [s.summary for s in scanned.values()], phase_table=cfg.phase_table,
            chunk_events=cfg.chunk_events))
        first = first_free_seqs(job_id, listed, old_ours)
        new_ours = {chunk_key(job_id, phase, first.get(phase, 0) + i)
                    for phase, step in plan.steps.items() for i in range(step["chunks"])}
        if new_ours != old_ours:
            # Before any chunk exists under its name, the manifest claims it (and still every old one).
            await store.put(manifest_key(job_id), encode_manifest(old_ours | new_ours))
        written = await write_chunks(store, reader, cfg, job_id, plan, scanned, first, budget)
        for phase, count in written.items():
            if count != plan.steps[phase]["chunks"]:
                raise StoreError(f"staging changed during finalize: {phase} has {count} chunks, not "
                                 f"{plan.steps[phase]['chunks']}")
        fill_last_output(plan)
        stale = sorted(old_ours - new_ours)
        await delete_keys(store, stale, cfg.read_concurrency, reader.gate)
        if new_ours != old_ours:
            await store.put(manifest_key(job_id), encode_manifest(new_ours))
        summary = await cpu_work(len(scanned) * KEY_BYTES, summary_body, {
            "job_id": job_id,
            "complete": plan.complete,
            "incomplete_streams": plan.incomplete_streams,
            "steps": keep_longer_existing(plan.steps, existing_last_output),
        })
        await store.put(summary_key(job_id), summary)
        cleaned = await clean_staging(store, cfg, job_id, scanned.values(), reader.gate)
    log.info("finalized", extra={"fields": {"job_id": job_id, "complete": plan.complete, "streams": len(scanned),
                                            "chunks": len(new_ours), "stale_deleted": len(stale),
                                            "staging_deleted": cleaned, "requests_at_once": {
                                                "least": reader.gate.low, "most": reader.gate.high,
                                                "last": reader.gate.limit}}})
    return summary
