"""A stream's sending side: the outbox of formed batches, and the sender that delivers them.

The outbox holds one batch between the packer and the sender, so memory stays bounded (one batch
in flight, one waiting, one being built) while reading overlaps sending. The sender delivers one
batch at a time, in order; after each 2xx it has the checkpoint written (paced). A 413 halves the
batch; a single event too large for the aggregator is reported as dropped rather than lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from blastlogs.protocol import Dropped
from shipper.batch import Batch, Identity, encode_batch
from shipper.checkpoints import Checkpoint, PacedCheckpoints
from shipper.client import AggregatorClient, Verdict
from shipper.metrics import ShipperMetrics

log = logging.getLogger("shipper.stream")


class Outbox:
    """Formed batches waiting for the sender (at most one), and what they hold until acknowledged."""

    def __init__(self, metrics: ShipperMetrics, container: str) -> None:
        self._queue: asyncio.Queue[Batch | None] = asyncio.Queue(maxsize=1)
        self._gauge = metrics.queue_bytes.labels(container=container)
        #: encoded bytes and lines formed and not yet acknowledged
        self.nbytes = 0
        self.lines = 0

    async def put(self, batch: Batch) -> None:
        """Hand a batch to the sender; waits while one is waiting already."""
        self.nbytes += batch.size
        self.lines += len(batch.events)
        self._gauge.set(self.nbytes)
        await self._queue.put(batch)

    async def close(self) -> None:
        """No more batches: the sender ends once it delivered those before."""
        await self._queue.put(None)

    async def get(self) -> Batch | None:
        return await self._queue.get()

    def delivered(self, lines: int) -> None:
        """`lines` of the batch being sent are acknowledged, or reported as dropped."""
        self.lines -= lines

    def sent(self, batch: Batch) -> None:
        """The sender is done with `batch` (its events acknowledged, or reported as dropped)."""
        self.nbytes -= batch.size
        self._gauge.set(max(self.nbytes, 0))


class Sender:
    def __init__(self, ident: Identity, name: str, client: AggregatorClient, outbox: Outbox,
                 checkpoints: PacedCheckpoints, metrics: ShipperMetrics, reject_backoff: float,
                 resume: Checkpoint | None, on_ack: Callable[[], None] = lambda: None) -> None:
        self.ident = ident
        self.name = name
        self.client = client
        self.outbox = outbox
        self.checkpoints = checkpoints
        self.metrics = metrics
        self.reject_backoff = reject_backoff
        #: called after each acknowledgement (the stream updates its lag)
        self.on_ack = on_ack
        self._labels = {"container": ident.container}
        #: the next batch's seq, the stream offset delivered up to, and whether the eof was
        self.seq = resume.seq if resume else 0
        self.acked_off = resume.off if resume else 0
        self.eof_acked = resume.eof if resume else False
        #: the batch being delivered
        self.in_flight: Batch | None = None

    def reopened(self) -> None:
        """New lines after the eof was acknowledged: the stream is not complete any more."""
        self.eof_acked = False

    async def run(self) -> None:
        """Deliver every batch the outbox gets, until it is closed."""
        while True:
            batch = await self.outbox.get()
            if batch is None:
                return
            self.in_flight = batch
            await self._deliver(batch)
            self.in_flight = None
            self.outbox.sent(batch)

    async def _deliver(self, batch: Batch) -> None:
        while True:
            out = await self.client.deliver(encode_batch(self.ident, self.seq, batch), self.name)
            if out.verdict is Verdict.OK:
                await self._acked(batch)
                return
            # 413: halve; a single event too large is reported as dropped rather than lost.
            if len(batch.events) > 1:
                first, second = batch.split()
                log.warning("batch too large for the aggregator; splitting",
                            extra={"stream": self.name, "events": len(batch.events)})
                await self._deliver(first)
                await self._deliver(second)
                return
            if batch.events:
                drop = Dropped(batch.offs[0], 1, batch.end - batch.offs[0])
                log.error("a single event is too large for the aggregator; reporting it as dropped",
                          extra={"stream": self.name, "off": batch.offs[0]})
                count_drop(self.metrics, self.name, self._labels, drop)
                self.outbox.delivered(1)
                batch = batch.without_events(drop)
                continue
            log.error("aggregator answered 413 to a batch without events; waiting",
                      extra={"stream": self.name})
            await asyncio.sleep(self.reject_backoff)

    async def _acked(self, batch: Batch) -> None:
        cur = batch.cursor
        self.checkpoints.submit(Checkpoint(self.ident.container, cur.dev, cur.ino, cur.pos, cur.base,
                                           self.seq + 1, batch.shipped, eof=batch.eof))
        if batch.eof:
            await self.checkpoints.flush()
        self.seq += 1
        self.acked_off = cur.off
        self.eof_acked = batch.eof
        self.metrics.batches.labels(**self._labels).inc()
        self.outbox.delivered(len(batch.events))
        if batch.events:
            self.metrics.lines_shipped.labels(**self._labels).inc(len(batch.events))
            self.metrics.bytes_shipped.labels(**self._labels).inc(batch.end - batch.offs[0])
        self.on_ack()
        if batch.eof:
            log.info("stream complete", extra={"stream": self.name, "off": cur.off, "seq": self.seq - 1,
                                               "exit_code": batch.exit_code})


def count_drop(metrics: ShipperMetrics, name: str, labels: dict[str, str], drop: Dropped) -> None:
    """Count and log lines left out of a stream."""
    metrics.lines_dropped.labels(**labels).inc(drop.lines)
    metrics.bytes_dropped.labels(**labels).inc(drop.bytes)
    log.warning("lines left out of the stream", extra={
        "stream": name, "off": drop.off, "lines": drop.lines, "bytes": drop.bytes})
