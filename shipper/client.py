"""HTTP delivery of encoded batches: whether to retry, apart from how long to wait; URL failover.

Policy (never a hot loop, never a silent loss):

| answer | verdict | what happens |
|---|---|---|
| 2xx | OK | delivered: the caller checkpoints |
| 413 | SPLIT | the caller halves the batch; a single event too large becomes a `dropped` report |
| 408, 429, 5xx, connection error, timeout | RETRY | next URL; after a full round, capped exponential backoff with full jitter, at least `Retry-After` |
| 400, 401, 403, any other 4xx | REJECT | logged and counted; the data is kept and retried after `reject_backoff` (at drain it is reported as undelivered) |
"""

from __future__ import annotations

import asyncio
import enum
import gzip
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from blastlogs.protocol import INGEST_PATH
from blastlogs.retry import backoff_delay, parse_retry_after
from shipper.http import HttpClient, HttpError
from shipper.metrics import ShipperMetrics

log = logging.getLogger("shipper.client")


class Verdict(enum.Enum):
    OK = "ok"
    RETRY = "retry"
    SPLIT = "split"
    REJECT = "reject"


def classify(status: int | None) -> Verdict:
    """`None` stands for no answer at all (connection refused or dropped, timeout)."""
    if status is None:
        return Verdict.RETRY
    if 200 <= status < 300:
        return Verdict.OK
    if status == 413:
        return Verdict.SPLIT
    if status in (408, 429) or status >= 500:
        return Verdict.RETRY
    return Verdict.REJECT


@dataclass(frozen=True)
class Outcome:
    verdict: Verdict
    status: int | None
    retry_after: float | None
    detail: str
    url: str


class AggregatorClient:
    """One per process: the current URL is shared, so every stream fails over together."""

    def __init__(self, http: HttpClient, urls: tuple[str, ...], token: str, *,
                 timeout: float, use_gzip: bool, backoff_base: float, backoff_max: float,
                 retry_after_max: float, reject_backoff: float, metrics: ShipperMetrics,
                 rand: Callable[[], float] = random.random) -> None:
        self.http = http
        self.urls = urls
        self._auth = f"Bearer {token}"
        self.timeout = timeout
        self.use_gzip = use_gzip
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.retry_after_max = retry_after_max
        self.reject_backoff = reject_backoff
        self.metrics = metrics
        self.rand = rand
        self.current = 0
        #: the last failed attempt while no attempt has succeeded since, and since when (monotonic)
        self.failing: Outcome | None = None
        self.failing_since = 0.0

    async def post(self, body: bytes) -> Outcome:
        """One attempt against the current URL."""
        url = self.urls[self.current]
        headers = {"Authorization": self._auth, "Content-Type": "application/json"}
        data = body
        if self.use_gzip:
            data = gzip.compress(body, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        try:
            resp = await self.http.post(url + INGEST_PATH, data, headers, timeout=self.timeout)
        except HttpError as exc:
            return Outcome(Verdict.RETRY, None, None, f"{type(exc).__name__}: {exc}"[:300], url)
        text = "" if 200 <= resp.status < 300 else resp.body[:1200].decode(errors="replace")[:300]
        return Outcome(classify(resp.status), resp.status, parse_retry_after(resp.header("Retry-After")),
                       text, url)

    async def deliver(self, body: bytes, stream: str) -> Outcome:
        """Send until 2xx or 413; waits between attempts as the policy says. Cancel to give up."""
        attempt = 0
        tried = 0
        while True:
            out = await self.post(body)
            if out.verdict in (Verdict.OK, Verdict.SPLIT):
                self.failing = None
                return out
            if self.failing is None:
                self.failing_since = time.monotonic()
            self.failing = out
            reason = "connection" if out.status is None else str(out.status)
            self.metrics.retries.labels(reason=reason).inc()
            if out.verdict is Verdict.REJECT:
                self.metrics.rejected.labels(status=reason).inc()
            if len(self.urls) > 1:
                self.current = (self.current + 1) % len(self.urls)
            tried += 1
            if tried < len(self.urls) and out.retry_after is None:
                log.warning("send failed, trying the next aggregator",
                            extra={"stream": stream, "status": out.status, "url": out.url,
                                   "detail": out.detail})
                continue
            tried = 0
            if out.verdict is Verdict.REJECT:
                delay = max(self.reject_backoff, min(out.retry_after or 0.0, self.retry_after_max))
            else:
                delay = backoff_delay(attempt, self.backoff_base, self.backoff_max, self.rand(),
                                      out.retry_after, self.retry_after_max)
                attempt += 1
            level = logging.ERROR if out.verdict is Verdict.REJECT else logging.WARNING
            log.log(level, "send failed, data kept, retrying" if out.verdict is Verdict.RETRY
                    else "aggregator rejected the batch; data kept, retrying later",
                    extra={"stream": stream, "status": out.status, "url": out.url,
                           "detail": out.detail, "retry_in": round(delay, 3)})
            await asyncio.sleep(delay)
