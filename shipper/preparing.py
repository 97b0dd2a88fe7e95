"""`Preparer`: a stream's chunks on their way from the reader to the batches, in read order.

Each chunk read is prepared (sanitised, capped, encoded: `shipper.prepare`) either in a sanitising
worker or here, and placed in read order. The redactor state runs from one chunk into the next; a
chunk given to a worker before the one ahead of it was placed starts from a guess (the clean
state), which `next` checks and, when wrong, redoes from the state it knows exactly.
"""

from __future__ import annotations

import asyncio
from collections import deque

from shipper.metrics import ShipperMetrics
from shipper.prepare import Prepared, prepare
from shipper.reader import Chunk
from shipper.redact import CLEAN_STATE, RedactorState
from shipper.sanitise import Sanitiser
from shipper.workers import MAX_QUEUED, Reply, SanitiserPool


class Preparer:
    def __init__(self, sanitiser: Sanitiser, pool: SanitiserPool | None, metrics: ShipperMetrics) -> None:
        self.sanitiser = sanitiser
        self.pool = pool
        self.metrics = metrics
        #: chunks read and being prepared, oldest first, with what will answer for each
        self.chunks: deque[tuple[Chunk, Reply | Prepared | None]] = deque()
        #: chunks in flight beyond the one being placed: enough to keep every worker's queue full
        self.depth = pool.size * MAX_QUEUED if pool is not None else 0
        #: the redactor state after the last chunk taken by `next`
        self.state: RedactorState = CLEAN_STATE

    def __len__(self) -> int:
        return len(self.chunks)

    def lines(self) -> int:
        """Lines read and not yet taken."""
        return sum(len(chunk) for chunk, _ in self.chunks)

    @property
    def full(self) -> bool:
        """Take the oldest before reading on: the workers' queues are full, or the pool holds more
        than they take over every stream (then each stream keeps at most one chunk)."""
        return len(self.chunks) > self.depth or (
            self.pool is not None and self.pool.crowded and len(self.chunks) > 1)

    def submit(self, chunk: Chunk) -> None:
        """Start preparing `chunk`: in a worker when there is a pool and the chunk is plain lines.

        A chunk is prepared from the redactor state the previous chunk ends in when that is known
        (no chunk in flight), and otherwise from the clean state, which is right unless a PEM block
        or an env entry spans the read boundary; `next` checks and redoes it if not. When every
        worker is busy the chunk is prepared here at once, so this process works beside the
        workers instead of waiting for their answers.
        """
        pending: Reply | Prepared | None = None
        if self.pool is not None and not chunk.extras and chunk.joined is not None:
            guess = CLEAN_STATE if self.chunks else self.state
            pending = self.pool.submit(chunk, guess)
            if pending is None:
                pending = prepare(self.sanitiser, chunk, guess)
        self.chunks.append((chunk, pending))
        if self.pool is not None:
            self.pool.hold()

    async def next(self) -> tuple[Chunk, Prepared]:
        """The oldest chunk, prepared from the state the one before it ended in."""
        chunk, pending = self.chunks[0]
        in_worker = isinstance(pending, asyncio.Future)
        prepared = await pending if isinstance(pending, asyncio.Future) else pending
        self.chunks.popleft()
        if self.pool is not None:
            self.pool.release()
        # worker; shipper (every worker busy, or none); redone (a wrong state guess, a failed worker)
        where = "worker" if in_worker else "shipper"
        if prepared is None or prepared.start != self.state:
            where = "redone" if in_worker or prepared is not None else "shipper"
            prepared = prepare(self.sanitiser, chunk, self.state)
        if self.pool is not None:
            self.metrics.prepared.labels(where=where).inc()
        self.state = prepared.state
        return chunk, prepared

    def close(self) -> None:
        """The stream stops early: give the pool back what it holds (kept for `lines`)."""
        if self.pool is not None:
            self.pool.release(len(self.chunks))
