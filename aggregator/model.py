"""Plain values shared by ingest (which stores batches) and finalize (which reads them back)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Dropped:
    """What the shipper deliberately left out just before a batch, starting at stream position `off`."""

    off: int
    lines: int
    bytes: int
    #: False: the shipper could not know what it lost; `lines` and `bytes` are lower bounds
    exact: bool = True


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
