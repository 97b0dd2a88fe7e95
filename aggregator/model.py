"""Plain values shared by ingest (which stores batches) and finalize (which reads them back)."""

from __future__ import annotations

from dataclasses import dataclass

# A batch's `dropped` report is the protocol's own value, the one the shipper sends.
from blastlogs.protocol import Dropped

__all__ = ["Dropped", "StoredBatch"]


@dataclass(frozen=True, slots=True)
class StoredBatch:
    """One ingested batch as staging holds it. `events` are (off, ts, line), lines already capped."""

    job_id: str
    pod: str
    container: str
    phase: str
    seq: int
    eof: bool
    exit_code: int | None
    dropped: Dropped | None
    events: tuple[tuple[int, float, str], ...]
