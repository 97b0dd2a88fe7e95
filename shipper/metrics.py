"""Prometheus metrics (an own registry, so tests and embedders never collide) and the local
`/metrics` + `/healthz` server: a minimal HTTP/1.1 responder on `asyncio.start_server` (GET and
HEAD, one request per connection), so that the shipper does not import aiohttp's server."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final, TypeVar, cast

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

_P = "blast_logs_shipper_"
MAX_REQUEST_HEAD: Final = 8 * 1024  # request line and headers; a longer head is closed unanswered
REQUEST_TIMEOUT: Final = 10.0  # for the request head to arrive and the answer to be taken


_M = TypeVar("_M", Counter, Gauge)


class ShipperMetrics:
    def __init__(self) -> None:
        #: labelled children made by `of` (`labels()` costs a few microseconds a call, per batch)
        self._children: dict[tuple[int, tuple[str, ...]], Counter | Gauge] = {}
        r = self.registry = CollectorRegistry()
        self.lines_read = Counter(_P + "lines_read", "Lines read from log files", ["container"], registry=r)
        self.bytes_read = Counter(_P + "bytes_read", "Bytes read from log files", ["container"], registry=r)
        self.lines_shipped = Counter(_P + "lines_shipped", "Lines acknowledged by the aggregator",
                                     ["container"], registry=r)
        self.bytes_shipped = Counter(_P + "bytes_shipped", "Log bytes acknowledged by the aggregator",
                                     ["container"], registry=r)
        self.batches = Counter(_P + "batches", "Batches acknowledged", ["container"], registry=r)
        self.redacted = Counter(_P + "redacted", "Secrets redacted, by kind", ["kind"], registry=r)
        self.truncated = Counter(_P + "lines_truncated", "Lines cut to the line cap", ["container"],
                                 registry=r)
        self.lines_dropped = Counter(_P + "lines_dropped", "Lines left out (stream budget, truncation)",
                                     ["container"], registry=r)
        self.bytes_dropped = Counter(_P + "bytes_dropped", "Bytes left out (stream budget, truncation)",
                                     ["container"], registry=r)
        self.retries = Counter(_P + "retries", "Failed sends that will be retried, by reason",
                               ["reason"], registry=r)
        self.rejected = Counter(_P + "rejected", "Batches the aggregator rejected with a 4xx (kept)",
                                ["status"], registry=r)
        self.queue_bytes = Gauge(_P + "queue_bytes", "Encoded batch bytes formed but not yet acknowledged",
                                 ["container"], registry=r)
        self.lag_bytes = Gauge(_P + "lag_bytes", "Log bytes written but not yet acknowledged",
                               ["container"], registry=r)
        self.lag_seconds = Gauge(_P + "lag_seconds", "Age of the oldest unacknowledged line",
                                 ["container"], registry=r)
        self.workers = Gauge(_P + "sanitise_workers", "Sanitising worker processes running", registry=r)
        self.worker_restarts = Counter(_P + "sanitise_worker_restarts",
                                       "Sanitising workers started again after one exited", registry=r)
        self.prepared = Counter(_P + "chunks_prepared", "Chunks of lines sanitised and encoded, by where",
                                ["where"], registry=r)
        self.streams = Gauge(_P + "streams", "Streams being shipped", registry=r)
        # Fail-open health (`shipper.health`) and volume reclaim (`shipper.reclaim`).
        self.config_errors = Gauge(_P + "config_errors",
                                   "Configuration problems that keep the shipper from shipping", registry=r)
        self.healthy = Gauge(_P + "healthy", "1 while shipping without a known problem, else 0 "
                             "(/healthz says what is wrong)", registry=r)
        self.reclaimed_bytes = Counter(_P + "reclaimed_bytes",
                                       "Volume bytes given back from delivered log prefixes (holes punched)",
                                       ["container"], registry=r)
        self.reclaim_errors = Counter(_P + "reclaim_errors",
                                      "Failed attempts to give back delivered log space, by reason",
                                      ["reason"], registry=r)
        self.log_disk_bytes = Gauge(_P + "log_disk_bytes",
                                    "Volume bytes a log file holds (allocated: what reclaim left)",
                                    ["container"], registry=r)
        self.volume_limit = Gauge(_P + "volume_limit_bytes",
                                  "The shared volume's size limit as configured (0: unknown)", registry=r)
        self.open_files = Gauge(_P + "open_files", "Log files held open (at most the open-file cap)",
                                registry=r)
        self.files_closed = Counter(_P + "files_closed",
                                    "Log files closed to stay under the open-file cap (reopened by identity)",
                                    registry=r)

    def of(self, metric: _M, *values: str) -> _M:
        """`metric.labels(*values)`, made once and kept: for the counters moved per batch and per read."""
        key = (id(metric), values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return cast(_M, child)

    def render(self) -> bytes:
        return generate_latest(self.registry)


async def start_server(metrics: ShipperMetrics, host: str, port: int,
                       health: Callable[[], dict[str, object]]) -> asyncio.Server | None:
    """Serve /metrics and /healthz on host:port; port 0 disables the server."""
    if port == 0:
        return None

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                writer.write(_answer(await reader.readuntil(b"\r\n\r\n"), metrics, health))
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError):
            pass  # incomplete, oversized or slow request head, or the scraper went away: just close
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port, limit=MAX_REQUEST_HEAD)


def _answer(head: bytes, metrics: ShipperMetrics, health: Callable[[], dict[str, object]]) -> bytes:
    """The whole answer to one request head (`Connection: close`)."""
    request_line = head.split(b"\r\n", 1)[0].split(b" ")
    if len(request_line) != 3 or not request_line[2].startswith(b"HTTP/1."):
        return _response(400, "Bad Request", b"bad request\n", "text/plain")
    method, path = request_line[0], request_line[1].split(b"?", 1)[0]
    if method not in (b"GET", b"HEAD"):
        return _response(405, "Method Not Allowed", b"method not allowed\n", "text/plain",
                         extra="Allow: GET, HEAD\r\n")
    head_only = method == b"HEAD"
    if path == b"/metrics":
        return _response(200, "OK", metrics.render(), CONTENT_TYPE_LATEST, head_only=head_only)
    if path == b"/healthz":
        # Liveness: 200 whenever the process answers; the body says what is wrong (fail-open).
        return _response(200, "OK", orjson.dumps({"status": "ok", **health()}), "application/json",
                         head_only=head_only)
    if path == b"/readyz":
        # Startup: 200 once logwrap is in the volume, whatever the configuration.
        report = health()
        ready = report.get("ready", True) is True
        return _response(200 if ready else 503, "OK" if ready else "Service Unavailable",
                         orjson.dumps({"status": "ok", **report}), "application/json", head_only=head_only)
    return _response(404, "Not Found", b"not found\n", "text/plain", head_only=head_only)


def _response(status: int, reason: str, body: bytes, content_type: str, *, extra: str = "",
              head_only: bool = False) -> bytes:
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n").encode()
    return head if head_only else head + body
