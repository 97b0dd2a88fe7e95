"""Prometheus metrics, one registry per app so several apps (tests, replicas in one process) never collide."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

#: Finalize can take from milliseconds (small job) to minutes (waiting for eof); buckets span both.
FINALIZE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, float("inf"))
#: An ingest is a staging write: milliseconds on a local disk, tens to hundreds on Azure.
INGEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, float("inf"))
#: Finalize outcomes: `complete` (every stream reached eof), `incomplete` (some did not: logs may be
#: missing), `error` (storage trouble or a bug), `not_found` (nothing staged), `busy` (lock held).
FINALIZE_OUTCOMES = ("complete", "incomplete", "error", "not_found", "busy")
#: Why a token was rejected (the `reason` label of rejected_tokens).
REJECT_REASONS = ("invalid_token", "malformed", "admin_token", "job_token", "wrong_job")
#: The `job_id` label of rejected_tokens (not `job`: Prometheus gives that to the scrape target)
#: takes at most this many distinct job ids per process; later ones are counted under OTHER_JOBS,
#: so a client inventing job ids cannot grow the registry.
MAX_REJECTED_JOB_LABELS = 100
OTHER_JOBS = "_other"
#: The `job_id` label when neither the token nor the request names a valid job id.
NO_JOB = "_none"


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
        self.storage_operations = Counter("blast_logs_aggregator_storage_operations",
                                          "Storage operations (get, put, delete, list) by what they served "
                                          "(ingest, compact, finalize, read, other)", ["op", "phase"],
                                          registry=r)
        self.compactions = Counter("blast_logs_aggregator_compactions",
                                   "Background (ingest-side) compactions of a stream, by outcome (done, error)",
                                   ["outcome"], registry=r)
        self.finalize_seconds = Histogram("blast_logs_aggregator_finalize_duration_seconds",
                                          "Finalize duration, waiting included", ["outcome"],
                                          buckets=FINALIZE_BUCKETS, registry=r)
        self.in_flight = Gauge("blast_logs_aggregator_ingests_in_flight", "Ingest requests being handled",
                               registry=r)
        self.ingest_seconds = Histogram("blast_logs_aggregator_ingest_duration_seconds",
                                        "Ingest request duration, body read and staging write included",
                                        buckets=INGEST_BUCKETS, registry=r)
        self.dropped_lines = Counter("blast_logs_aggregator_dropped_lines",
                                     "Lines shippers report they left out (stream budget, over-long lines), "
                                     "counted once per stored batch", registry=r)
        self.dropped_bytes = Counter("blast_logs_aggregator_dropped_bytes",
                                     "Bytes shippers report they left out, counted once per stored batch",
                                     registry=r)
        self.rejected_tokens = Counter("blast_logs_aggregator_rejected_tokens",
                                       "Requests refused for their token (401/403), by the job id the token "
                                       f"names (at most {MAX_REJECTED_JOB_LABELS} distinct, then "
                                       f"{OTHER_JOBS!r}; {NO_JOB!r} when it names none) and reason",
                                       ["job_id", "reason"], registry=r)
        self._rejected_jobs: set[str] = set()

    def reject_token(self, job: str | None, reason: str) -> None:
        """Count a refused token under a bounded `job_id` label (see MAX_REJECTED_JOB_LABELS)."""
        self.rejected_tokens.labels(self.job_label(job), reason).inc()

    def job_label(self, job: str | None) -> str:
        """`job` itself while fewer than MAX_REJECTED_JOB_LABELS ids have been seen, else OTHER_JOBS."""
        if job is None:
            return NO_JOB
        if job not in self._rejected_jobs:
            if len(self._rejected_jobs) >= MAX_REJECTED_JOB_LABELS:
                return OTHER_JOBS
            self._rejected_jobs.add(job)
        return job

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
