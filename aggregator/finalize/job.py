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
from collections.abc import Mapping
from functools import partial

from aggregator.artifacts import build_artifacts, chunk_body, keep_longer_existing, summary_body
from aggregator.config import AggregatorConfig
from aggregator.errors import JobNotFound
from aggregator.fanout import run_bounded
from aggregator.finalize.lock import JobLock
from aggregator.finalize.manifest import decode_manifest, encode_manifest, first_free_seqs
from aggregator.model import StoredBatch
from aggregator.staging import decode_batch
from aggregator.storage import Store
from aggregator.storage.layout import (
    chunk_key,
    logs_prefix,
    manifest_key,
    parse_batch_key,
    staging_prefix,
    stream_states,
    summary_key,
)

log = logging.getLogger("aggregator.finalize")

def _not_found(job_id: str) -> JobNotFound:
    return JobNotFound(f"nothing is stored for job {job_id}")


async def wait_for_eof(store: Store, job_id: str, wait_seconds: float, poll: float) -> dict[tuple[str, str], bool]:
    """Poll staging until every known stream has an eof object or time is up; the streams' states."""
    deadline = time.monotonic() + wait_seconds
    while True:
        states = stream_states(job_id, await store.list_keys(staging_prefix(job_id)))
        if not states:
            raise _not_found(job_id)
        left = deadline - time.monotonic()
        if all(states.values()) or left <= 0:
            return states
        await asyncio.sleep(min(poll, left))


async def read_staged(store: Store, job_id: str, concurrency: int) -> list[StoredBatch]:
    keys = [k for k in await store.list_keys(staging_prefix(job_id)) if parse_batch_key(job_id, k)]

    async def read(key: str) -> StoredBatch | None:
        data = await store.get(key)
        if data is None:
            return None
        try:
            return decode_batch(data)
        except ValueError as e:
            log.error("unreadable staged batch skipped", extra={"fields": {"key": key, "error": str(e)}})
            return None

    found = await run_bounded(concurrency, (partial(read, k) for k in keys))
    return [b for b in found if b is not None and b.job_id == job_id]


async def finalize_job(store: Store, cfg: AggregatorConfig, job_id: str, *, wait_seconds: float,
                       existing_last_output: Mapping[str, str]) -> bytes:
    """Build and write the job's artifacts; the summary.json bytes (the response body)."""
    await wait_for_eof(store, job_id, wait_seconds, cfg.poll_seconds)
    async with JobLock(store, job_id, ttl=cfg.lock_ttl, wait=cfg.lock_wait, poll=cfg.poll_seconds,
                       renew=cfg.lock_renew):
        listed = await store.list_keys(logs_prefix(job_id))
        old_ours = decode_manifest(await store.get(manifest_key(job_id)))
        batches = await read_staged(store, job_id, cfg.read_concurrency)
        if not batches:
            raise _not_found(job_id)
        art = build_artifacts(batches, phase_table=cfg.phase_table, head_lines=cfg.head_lines,
                              tail_lines=cfg.tail_lines, chunk_events=cfg.chunk_events)
        first = first_free_seqs(job_id, listed, old_ours)
        writes: dict[str, bytes] = {}
        for phase, chunks in art.phases.items():
            for i, events in enumerate(chunks):
                seq = first.get(phase, 0) + i
                writes[chunk_key(job_id, phase, seq)] = chunk_body(job_id, phase, seq, events)
        new_ours = set(writes)
        if new_ours != old_ours:
            # Before any chunk exists under its name, the manifest claims it (and still every old one).
            await store.put(manifest_key(job_id), encode_manifest(old_ours | new_ours))
        await run_bounded(cfg.read_concurrency,
                              (partial(store.put, k, b) for k, b in sorted(writes.items())))
        stale = sorted(old_ours - new_ours)
        await run_bounded(cfg.read_concurrency, (partial(store.delete, k) for k in stale))
        if new_ours != old_ours:
            await store.put(manifest_key(job_id), encode_manifest(new_ours))
        summary = summary_body({
            "job_id": job_id,
            "complete": art.complete,
            "incomplete_streams": art.incomplete_streams,
            "steps": keep_longer_existing(art.steps, existing_last_output),
        })
        await store.put(summary_key(job_id), summary)
    log.info("finalized", extra={"fields": {"job_id": job_id, "complete": art.complete,
                                            "chunks": len(new_ours), "stale_deleted": len(stale)}})
    return summary
