"""Finalize: wait for every stream's eof, then, under the job's lock, turn staging into artifacts.

Order matters for other writers and for replicas (docs/design.md, "Finalize and concurrent replicas"):
list `logs/` before reading the manifest; write the manifest (old and new names) before the chunks;
delete our stale chunks; write the manifest again with only the new names; then `summary.json`.
The same staging contents give the same bytes on every run and on every replica.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from functools import partial
from types import TracebackType
from typing import Any, TypeVar

import orjson
from aiohttp import web

from aggregator.artifacts import build_artifacts, chunk_body, keep_longer_existing, summary_body
from aggregator.auth import check_admin
from aggregator.config import AggregatorConfig
from aggregator.errors import BadRequest, JobNotFound, LockBusy, StoreError
from aggregator.ingest import read_body
from aggregator.metrics import Metrics
from aggregator.model import StoredBatch
from aggregator.staging import decode_batch
from aggregator.storage import Store
from aggregator.storage.layout import (
    chunk_key,
    lock_key,
    logs_prefix,
    manifest_key,
    parse_batch_key,
    staging_prefix,
    stream_states,
    summary_key,
)
from blastlogs.protocol import valid_job_id

log = logging.getLogger("aggregator.finalize")

T = TypeVar("T")
MANIFEST_VERSION = 1
_CHUNK_NAME = re.compile(r"([0-9]+)\.json")


def _not_found(job_id: str) -> JobNotFound:
    return JobNotFound(f"nothing is stored for job {job_id}")


def parse_finalize_body(body: bytes, max_wait: float, default_wait: float = 0.0) -> tuple[float, dict[str, str]]:
    """`wait_seconds` (capped at max_wait) and `existing_last_output` from an optional JSON body."""
    if not body.strip():
        return min(default_wait, max_wait), {}
    try:
        obj: Any = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"body is not valid UTF-8 JSON: {e}") from None
    if not isinstance(obj, dict):
        raise BadRequest("body must be a JSON object")
    wait = obj.get("wait_seconds")
    if wait is None:
        wait = default_wait
    elif isinstance(wait, bool) or not isinstance(wait, int | float) or not math.isfinite(wait) or wait < 0:
        raise BadRequest("wait_seconds must be a finite number >= 0")
    existing = obj.get("existing_last_output")
    if existing is None:
        existing = {}
    elif not isinstance(existing, dict) or not all(isinstance(v, str) for v in existing.values()):
        raise BadRequest("existing_last_output must map phases to strings")
    return min(float(wait), max_wait), existing


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


class JobLock:
    """`_staging/_finalize.lock`: put-if-absent with an expiry, renewed while held, taken over once stale.

    Takeover of a stale lock is delete-then-create, re-checked by reading the lock back; two replicas
    racing for one stale lock can very rarely both proceed, and then still write the same bytes as long
    as staging does not change meanwhile.
    """

    def __init__(self, store: Store, job_id: str, *, ttl: float, wait: float, poll: float) -> None:
        self.store = store
        self.key = lock_key(job_id)
        self.ttl = ttl
        self.wait = wait
        self.poll = poll
        self.owner = uuid.uuid4().hex
        self._renewer: asyncio.Task[None] | None = None

    def _body(self) -> bytes:
        return orjson.dumps({"owner": self.owner, "expires": time.time() + self.ttl})

    def _is_ours(self, data: bytes | None) -> bool:
        return data is not None and _lock_field(data, "owner") == self.owner

    async def __aenter__(self) -> JobLock:
        deadline = time.monotonic() + self.wait
        while True:
            if await self.store.put(self.key, self._body(), overwrite=False):
                if self._is_ours(await self.store.get(self.key)):
                    break
            else:
                held = await self.store.get(self.key)
                if held is not None and _is_stale(held):
                    # Delete only the very lock we judged stale, then race for a fresh one at once.
                    if await self.store.get(self.key) == held:
                        log.warning("taking over a stale finalize lock", extra={"fields": {"key": self.key}})
                        await self.store.delete(self.key)
                    continue
                if held is None:
                    continue
            if time.monotonic() >= deadline:
                raise LockBusy("another finalize of this job is still running")
            await asyncio.sleep(self.poll)
        self._renewer = asyncio.create_task(self._renew())
        return self

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                if self._is_ours(await self.store.get(self.key)):
                    await self.store.put(self.key, self._body(), overwrite=True)
            except StoreError as e:
                log.warning("finalize lock renewal failed", extra={"fields": {"key": self.key, "error": str(e)}})

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            try:
                await self._renewer
            except asyncio.CancelledError:
                pass
        try:
            if self._is_ours(await self.store.get(self.key)):
                await self.store.delete(self.key)
        except StoreError as err:
            # It expires by itself; the next finalize takes it over.
            log.warning("finalize lock release failed", extra={"fields": {"key": self.key, "error": str(err)}})


def _lock_field(data: bytes, name: str) -> Any:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return obj.get(name) if isinstance(obj, dict) else None


def _is_stale(data: bytes) -> bool:
    expires = _lock_field(data, "expires")
    if isinstance(expires, bool) or not isinstance(expires, int | float):
        return True
    return expires < time.time()


async def _gather_bounded(limit: int, jobs: Iterable[Callable[[], Awaitable[T]]]) -> list[T]:
    sem = asyncio.Semaphore(limit)

    async def one(job: Callable[[], Awaitable[T]]) -> T:
        async with sem:
            return await job()

    return list(await asyncio.gather(*(one(j) for j in jobs)))


def decode_manifest(data: bytes | None) -> set[str]:
    if data is None:
        return set()
    obj = _safe_loads(data)
    chunks = obj.get("chunks") if isinstance(obj, dict) else None
    if not isinstance(chunks, list):
        log.error("unreadable finalize manifest; treating every chunk as foreign")
        return set()
    return {c for c in chunks if isinstance(c, str)}


def _safe_loads(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


def encode_manifest(keys: Iterable[str]) -> bytes:
    return orjson.dumps({"v": MANIFEST_VERSION, "chunks": sorted(keys)})


def first_free_seqs(job_id: str, listed: Iterable[str], ours: set[str]) -> dict[str, int]:
    """Per phase, the first chunk number after every foreign (not ours) `logs/{phase}/{n}.json`."""
    prefix = logs_prefix(job_id)
    first: dict[str, int] = {}
    for key in listed:
        if key in ours or not key.startswith(prefix):
            continue
        parts = key[len(prefix):].split("/")
        if len(parts) != 2:
            continue
        m = _CHUNK_NAME.fullmatch(parts[1])
        if m:
            first[parts[0]] = max(first.get(parts[0], 0), int(m.group(1)) + 1)
    return first


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

    found = await _gather_bounded(concurrency, (partial(read, k) for k in keys))
    return [b for b in found if b is not None and b.job_id == job_id]


async def finalize_job(store: Store, cfg: AggregatorConfig, job_id: str, *, wait_seconds: float,
                       existing_last_output: Mapping[str, str]) -> bytes:
    """Build and write the job's artifacts; the summary.json bytes (the response body)."""
    await wait_for_eof(store, job_id, wait_seconds, cfg.poll_seconds)
    async with JobLock(store, job_id, ttl=cfg.lock_ttl, wait=cfg.lock_wait, poll=cfg.poll_seconds):
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
        await _gather_bounded(cfg.read_concurrency,
                              (partial(store.put, k, b) for k, b in sorted(writes.items())))
        stale = sorted(old_ours - new_ours)
        await _gather_bounded(cfg.read_concurrency, (partial(store.delete, k) for k in stale))
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


class FinalizeHandler:
    """The finalize route: admin token, job id, optional body, then `finalize_job`."""

    def __init__(self, config: AggregatorConfig, metrics: Metrics, store: Callable[[], Store]) -> None:
        self.config = config
        self.metrics = metrics
        self.store = store

    async def __call__(self, request: web.Request) -> web.Response:
        cfg = self.config
        check_admin(request.headers.get("Authorization"), cfg.secret, cfg.admin_token)
        job_id = request.match_info["job_id"]
        if not valid_job_id(job_id):
            raise BadRequest( "job id must match [A-Za-z0-9][A-Za-z0-9._-]{0,127}")
        wait, existing = parse_finalize_body(await read_body(request, cfg.max_body_bytes),
                                             cfg.finalize_max_wait)
        started = time.monotonic()
        outcome = "error"
        try:
            body = await finalize_job(self.store(), cfg, job_id, wait_seconds=wait,
                                      existing_last_output=existing)
            outcome = "ok"
        except JobNotFound:
            outcome = "not_found"
            raise
        except LockBusy:
            outcome = "busy"
            raise
        except StoreError as e:
            outcome = "storage_error"
            self.metrics.storage_errors.labels("finalize").inc()
            log.warning("finalize storage failure", extra={"fields": {"job_id": job_id, "error": str(e)}})
            raise
        finally:
            self.metrics.finalize_seconds.labels(outcome).observe(time.monotonic() - started)
        return web.Response(body=body, content_type="application/json")
