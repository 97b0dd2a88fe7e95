"""Prometheus metrics, one registry per app so several apps (tests, replicas in one process) never collide."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

#: Finalize can take from milliseconds (small job) to minutes (waiting for eof); buckets span both.
FINALIZE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, float("inf"))


class Metrics:
    """What an operator needs to see the service work: traffic, volume, duplicates, storage trouble."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("blast_logs_aggregator_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=r)
        self.batches = Counter("blast_logs_aggregator_batches", "Batches accepted (stored or duplicate)",
                               registry=r)
        self.events = Counter("blast_logs_aggregator_events", "Events in accepted batches", registry=r)
        self.bytes = Counter("blast_logs_aggregator_ingest_bytes", "Inflated JSON bytes of accepted batches",
                             registry=r)
        self.duplicates = Counter("blast_logs_aggregator_duplicate_batches",
                                  "Batches already in staging (a re-send)", registry=r)
        self.storage_errors = Counter("blast_logs_aggregator_storage_errors",
                                      "Storage operations that failed (answered 503)", ["operation"],
                                      registry=r)
        self.finalize_seconds = Histogram("blast_logs_aggregator_finalize_duration_seconds",
                                          "Finalize duration, waiting included", ["outcome"],
                                          buckets=FINALIZE_BUCKETS, registry=r)
        self.in_flight = Gauge("blast_logs_aggregator_ingests_in_flight", "Ingest requests being handled",
                               registry=r)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
