"""`POST /v1/ingest`: check the token, bound the body, validate the batch, stage it durably, then ack.

The body is read within its caps by `aggregator.body`; `parse_batch` checks it field by field.
"""

from __future__ import annotations

import asyncio
import logging
import math
import operator
import time
from collections.abc import Callable
from typing import Any, cast

import orjson
from aiohttp import web

from aggregator.auth import check_ingest
from aggregator.body import json_object, read_body
from aggregator.checks import events_of_columns, is_int, is_nonneg_int, valid_columns
from aggregator.compaction import Compactor
from aggregator.config import AggregatorConfig
from aggregator.errors import AggregatorError, AuthError, BadBatch, Forbidden, StoreError, TooBusy
from aggregator.metrics import Metrics
from aggregator.model import Dropped, StoredBatch
from aggregator.refusals import Refusal, batch_identity, refusal_of, report, token_named_job
from aggregator.staging import encode_batch
from aggregator.storage import Store
from aggregator.storage.layout import batch_key
from aggregator.storage.phase import storage_phase
from blastlogs.protocol import JOB_ID_RULE, cap_line, valid_job_id, valid_k8s_name, valid_phase

log = logging.getLogger("aggregator.ingest")
#: A refused request's body is read (to name its pod in the log) by at most this many at once and
#: for at most this long: refusals never take ingest slots, nor hold memory or time beyond this.
REFUSAL_PEEKS = 4
REFUSAL_PEEK_SECONDS = 2.0

def parse_batch(body: bytes, *, max_events: int, max_line_chars: int) -> StoredBatch:
    """Validate a batch exactly per docs/protocol.md section 4; unknown fields are ignored, lines re-capped."""
    obj = json_object(body, BadBatch)
    job_id = obj.get("job_id")
    if not valid_job_id(job_id):
        raise BadBatch(JOB_ID_RULE)
    pod, container, phase = obj.get("pod"), obj.get("container"), obj.get("phase")
    if not valid_k8s_name(pod):
        raise BadBatch("pod must be a Kubernetes name")
    if not valid_k8s_name(container):
        raise BadBatch("container must be a Kubernetes name")
    if not valid_phase(phase):
        raise BadBatch("phase must match [a-z][a-z0-9_]{0,63}")
    seq = obj.get("seq")
    if not is_nonneg_int(seq):
        raise BadBatch("seq must be a non-negative integer")
    eof = obj.get("eof", False)
    if not isinstance(eof, bool):
        raise BadBatch("eof must be a boolean")
    exit_code = obj.get("exit_code")
    if exit_code is not None and not is_int(exit_code):
        raise BadBatch("exit_code must be an integer or null")
    dropped = _dropped(obj.get("dropped"))
    events = obj.get("events")
    if not isinstance(events, list):
        raise BadBatch("events must be a list")
    if len(events) > max_events:
        raise BadBatch(f"a batch holds at most {max_events} events, this one {len(events)}")
    out = _valid_events(events, max_line_chars)
    if out is None:
        out = _checked_events(events, max_line_chars)
    return StoredBatch(cast(str, job_id), cast(str, pod), cast(str, container), cast(str, phase),
                       cast(int, seq), eof, exit_code, dropped, out)


_OFF, _TS, _LINE = operator.itemgetter("off"), operator.itemgetter("ts"), operator.itemgetter("line")


def _valid_events(events: list[Any], max_line_chars: int) -> tuple[tuple[int, float, str], ...] | None:
    """The events as (off, ts, line) when every one is valid (the usual case), else None.

    The checks run over whole columns, in C where they can; they accept exactly what
    `_checked_events` accepts (orjson gives plain dict, int, float and str, never subclasses).
    Each column is taken with its own `map`: cheaper than transposing per-event tuples.
    """
    if not events:
        return ()
    if not set(map(type, events)) <= {dict}:
        return None
    try:
        offs, tss, lines = list(map(_OFF, events)), list(map(_TS, events)), list(map(_LINE, events))
    except KeyError:
        return None
    if not valid_columns(offs, tss, lines):
        return None
    if max(map(len, lines)) > max_line_chars:
        lines = [cap_line(line, max_line_chars) for line in lines]
    return events_of_columns(offs, tss, lines)


def _checked_events(events: list[Any], max_line_chars: int) -> tuple[tuple[int, float, str], ...]:
    """Check event by event: BadBatch names the first invalid one."""
    out: list[tuple[int, float, str]] = []
    for i, ev in enumerate(events):
        if not isinstance(ev, dict):
            raise BadBatch(f"events[{i}] must be an object")
        off, ts, line = cast(Any, ev.get("off")), cast(Any, ev.get("ts")), ev.get("line")
        if not is_nonneg_int(off):
            raise BadBatch(f"events[{i}].off must be a non-negative integer")
        if not ((is_int(ts) or isinstance(ts, float)) and math.isfinite(ts)):
            raise BadBatch(f"events[{i}].ts must be a finite number")
        if not isinstance(line, str):
            raise BadBatch(f"events[{i}].line must be a string")
        out.append((off, float(ts), cap_line(line, max_line_chars)))
    return tuple(out)


def _dropped(value: object) -> Dropped | None:
    """A report with lines > 0, else None (nothing was left out)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadBatch("dropped must be an object {off, lines, bytes}")
    lines, nbytes, off = value.get("lines", 0), value.get("bytes", 0), value.get("off")
    if not is_nonneg_int(lines) or not is_nonneg_int(nbytes):
        raise BadBatch("dropped.lines and dropped.bytes must be non-negative integers")
    if off is not None and not is_nonneg_int(off):
        raise BadBatch("dropped.off must be a non-negative integer")
    exact = value.get("exact", True)
    if not isinstance(exact, bool):
        raise BadBatch("dropped.exact must be a boolean")
    if lines == 0:
        return None
    if off is None:
        raise BadBatch("dropped.off is required when dropped.lines > 0")
    return Dropped(off, lines, nbytes, exact)




class IngestHandler:
    """The ingest route; `store` is looked up per request because the app opens it after routing."""

    def __init__(self, config: AggregatorConfig, metrics: Metrics, store: Callable[[], Store],
                 compactor: Compactor | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self.store = store
        self.compactor = compactor
        self.in_flight = 0
        self.peeking = 0

    async def __call__(self, request: web.Request) -> web.Response:
        started = time.monotonic()
        try:
            return await self._admit(request)
        finally:
            self.metrics.ingest_seconds.observe(time.monotonic() - started)

    async def _admit(self, request: web.Request) -> web.Response:
        cfg = self.config
        header = request.headers.get("Authorization")
        try:
            token_job = check_ingest(header, cfg.secret, cfg.admin_token)
        except AuthError as e:
            job, pod = await self._identity(request)
            report(self.metrics, refusal_of(e, header, finalize=False, job=job, pod=pod))
            raise
        if self.in_flight >= cfg.max_inflight_ingests:
            raise TooBusy("too many ingests in flight; retry later")
        self.in_flight += 1
        self.metrics.in_flight.inc()
        try:
            return await self._ingest(request, token_job)
        finally:
            self.in_flight -= 1
            self.metrics.in_flight.dec()

    async def _identity(self, request: web.Request) -> tuple[str | None, str | None]:
        """The job and pod a refused request's body names, so its log line can name them; read within
        the usual caps, REFUSAL_PEEKS at once for REFUSAL_PEEK_SECONDS at most, else unknown."""
        if self.peeking >= REFUSAL_PEEKS:
            return None, None
        self.peeking += 1
        try:
            async with asyncio.timeout(REFUSAL_PEEK_SECONDS):
                body = await read_body(request, self.config.max_body_bytes)
            return batch_identity(body)
        except (AggregatorError, TimeoutError):
            return None, None
        finally:
            self.peeking -= 1

    async def _ingest(self, request: web.Request, token_job: str) -> web.Response:
        cfg = self.config
        storage_phase.set("ingest")
        body = await read_body(request, cfg.max_body_bytes)
        batch = parse_batch(body, max_events=cfg.max_events, max_line_chars=cfg.max_line_chars)
        if batch.job_id != token_job:
            header = request.headers.get("Authorization")
            report(self.metrics, Refusal(403, "wrong_job", token_named_job(header), batch.job_id, batch.pod))
            raise Forbidden("the token belongs to another job")
        try:
            created = await self.store().put(batch_key(batch), encode_batch(batch), overwrite=False)
        except StoreError as e:
            self.metrics.storage_errors.labels("ingest").inc()
            log.warning("staging write failed", extra={"fields": {"job_id": batch.job_id, "error": str(e)}})
            raise
        if self.compactor is not None:
            self.compactor.stored(batch, created=created)  # runs after the answer, never fails it
        self.metrics.batches.inc()
        self.metrics.events.inc(len(batch.events))
        self.metrics.bytes.inc(len(body))
        if not created:
            self.metrics.duplicates.inc()
        elif batch.dropped is not None:  # a re-sent batch's loss was counted when it was stored
            self.metrics.dropped_lines.inc(batch.dropped.lines)
            self.metrics.dropped_bytes.inc(batch.dropped.bytes)
        return web.json_response({"accepted": len(batch.events), "duplicate": not created},
                                 dumps=lambda o: orjson.dumps(o).decode())
