"""Prometheus metrics (an own registry, so tests and embedders never collide) and the local
`/metrics` + `/healthz` server."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

_P = "blast_logs_shipper_"


class ShipperMetrics:
    def __init__(self) -> None:
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
        self.streams = Gauge(_P + "streams", "Streams being shipped", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)


async def start_server(metrics: ShipperMetrics, host: str, port: int,
                       health: Callable[[], dict[str, object]]) -> web.AppRunner | None:
    """Serve /metrics and /healthz on host:port; port 0 disables the server."""
    if port == 0:
        return None

    async def metrics_handler(_: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def health_handler(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok", **health()})

    app = web.Application()
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", health_handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
