"""`POST /v1/jobs/{job_id}/finalize`: check the admin token, the job id and the optional body, then finalize."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import orjson
from aiohttp import web

from aggregator.auth import check_admin
from aggregator.body import json_object, read_body
from aggregator.config import AggregatorConfig
from aggregator.errors import AuthError, BadRequest, JobNotFound, LockBusy, StoreError
from aggregator.finalize.job import FinalizeBudget, finalize_job
from aggregator.finalize.worker import FinalizeWorker
from aggregator.metrics import Metrics
from aggregator.refusals import refusal_of, report
from aggregator.storage import Store
from aggregator.storage.phase import storage_phase
from blastlogs.protocol import JOB_ID_RULE, valid_job_id

log = logging.getLogger("aggregator.finalize")


def parse_finalize_body(body: bytes, max_wait: float, default_wait: float = 0.0) -> tuple[float, dict[str, str]]:
    """`wait_seconds` (capped at max_wait) and `existing_last_output` from an optional JSON body."""
    if not body.strip():
        return min(default_wait, max_wait), {}
    obj = json_object(body)
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


class FinalizeHandler:
    """The finalize route: admin token, job id, optional body, then `finalize_job`: in the worker's child
    process when there is one, else here."""

    def __init__(self, config: AggregatorConfig, metrics: Metrics, store: Callable[[], Store],
                 budget: FinalizeBudget | None = None, worker: FinalizeWorker | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self.store = store
        self.budget = budget or FinalizeBudget()  # shared by every finalize on this replica
        self.worker = worker

    async def __call__(self, request: web.Request) -> web.Response:
        cfg = self.config
        job_id = request.match_info["job_id"]
        header = request.headers.get("Authorization")
        try:
            check_admin(header, cfg.secret, cfg.admin_token)
        except AuthError as e:
            report(self.metrics, refusal_of(e, header, finalize=True, job=job_id))
            raise
        if not valid_job_id(job_id):
            raise BadRequest(JOB_ID_RULE)
        wait, existing = parse_finalize_body(await read_body(request, cfg.max_body_bytes),
                                             cfg.finalize_max_wait)
        started = time.monotonic()
        storage_phase.set("finalize")
        outcome = "error"
        try:
            if self.worker is not None:
                body = await self.worker.finalize(job_id, wait, existing)
            else:
                body = await finalize_job(self.store(), cfg, job_id, wait_seconds=wait,
                                          existing_last_output=existing, budget=self.budget)
            outcome = "complete" if orjson.loads(body).get("complete") else "incomplete"
        except JobNotFound:
            outcome = "not_found"
            raise
        except LockBusy:
            outcome = "busy"
            raise
        except StoreError as e:
            self.metrics.storage_errors.labels("finalize").inc()
            log.warning("finalize storage failure", extra={"fields": {"job_id": job_id, "error": str(e)}})
            raise
        finally:
            self.metrics.finalize_seconds.labels(outcome).observe(time.monotonic() - started)
        return web.Response(body=body, content_type="application/json")
