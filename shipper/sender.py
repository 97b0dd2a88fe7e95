"""A stream's sending side: the outbox of formed batches, and the sender that delivers them.

The outbox holds up to `OUTBOX_DEPTH` batches between the packer and the sender, so memory stays
bounded (at most `PIPELINE` batches in flight, `OUTBOX_DEPTH` waiting, one being built) while
reading overlaps sending. The sender keeps more batches of lines on the wire while it awaits the
answer to the first (not the first batch, reports or the eof batch, nor while sends fail), and
takes the answers in order;
after each 2xx it has the checkpoint written (paced), so only what was delivered, in order, is
checkpointed. A 413 halves the batch; a single event too large for the aggregator is reported as
dropped rather than lost.

`seq` numbers the stream's requests in sending order (docs/protocol.md section 4): each batch takes
the next number when it first goes out, so the halves of a batch split after a later one went get
numbers above that one's. A 413 stored nothing, so when no batch went out after the refused one, its
halves (or its report) reuse its number, as when one batch at a time is on the wire.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, Final

from blastlogs.protocol import Dropped
from shipper.batch import Batch, Identity, encode_batch
from shipper.checkpoints import Checkpoint, PacedCheckpoints
from shipper.client import AggregatorClient, Outcome, Verdict
from shipper.metrics import ShipperMetrics

log = logging.getLogger("shipper.stream")

#: Batches of one stream on the wire at once: the next goes out while the answer to the one before
#: is awaited (the aggregator stores batches in any order), so a stream's lines/s is not bound by
#: one round trip per batch; the answers are still taken, and checkpointed, in order.
PIPELINE: Final = 3
#: Formed batches waiting for the sender. With three on the wire and two waiting, the reading loop
#: goes on through the aggregator's slower answers: with two and one, the shipper's event loop sat
#: idle 0.16-0.28 s of a 1.3-2.0 s run of the throughput bench waiting for the answers of a sink on
#: the other core; with three and two mostly 0.05-0.10 s (docs/benchmarks.md, "round eight").
OUTBOX_DEPTH: Final = 2

#: A batch on the wire: the batch, its `seq`, and its answer to come.
Flying = tuple[Batch, int, "asyncio.Future[Outcome]"]


class Outbox:
    """Formed batches waiting for the sender (at most `OUTBOX_DEPTH`), and what they hold until
    acknowledged."""

    def __init__(self, metrics: ShipperMetrics, container: str) -> None:
        self._queue: asyncio.Queue[Batch | None] = asyncio.Queue(maxsize=OUTBOX_DEPTH)
        self._gauge = metrics.queue_bytes.labels(container=container)
        #: encoded bytes and lines formed and not yet acknowledged
        self.nbytes = 0
        self.lines = 0

    async def put(self, batch: Batch) -> None:
        """Hand a batch to the sender; waits while `OUTBOX_DEPTH` are waiting already."""
        self.nbytes += batch.size
        self.lines += batch.count
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
        #: the next batch's seq (in sending order), the stream offset delivered up to, and whether the eof was
        self.seq = resume.seq if resume else 0
        self.acked_off = resume.off if resume else 0
        self.eof_acked = resume.eof if resume else False
        #: the oldest batch being delivered
        self.in_flight: Batch | None = None

    def reopened(self) -> None:
        """New lines after the eof was acknowledged: the stream is not complete any more."""
        self.eof_acked = False

    async def run(self) -> None:
        """Deliver every batch the outbox gets, until it is closed: up to `PIPELINE` on the wire at
        once, their answers taken (and checkpointed) in order."""
        flying: deque[Flying] = deque()
        taking: asyncio.Future[Batch | None] | None = None
        held: Batch | None = None  # the next batch, which must wait until those flying are acknowledged
        closed = False
        try:
            while flying or not closed or held is not None:
                if held is not None and (not flying or self._beside(flying[-1][0], held)):
                    flying.append(self._send(held))
                    held = None
                if taking is None and held is None and not closed and len(flying) < PIPELINE:
                    taking = asyncio.ensure_future(self.outbox.get())
                if flying:
                    self.in_flight = flying[0][0]
                    waits: set[asyncio.Future[Any]] = {flying[0][2]}
                    if taking is not None:
                        waits.add(taking)
                    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                elif taking is not None:
                    await asyncio.wait({taking})
                if taking is not None and taking.done():
                    got = taking.result()
                    taking = None
                    if got is None:
                        closed = True
                    else:
                        held = got
                if flying and flying[0][2].done():
                    batch, seq, answer = flying.popleft()
                    await self._deliver(batch, seq, answer.result())
                    self.outbox.sent(batch)
                    self.in_flight = flying[0][0] if flying else None
        finally:
            for _, _, answer in flying:
                answer.cancel()
            if taking is not None:
                taking.cancel()
            self.in_flight = None

    def _beside(self, before: Batch, batch: Batch) -> bool:
        """Whether `batch` may go out while `before` awaits its answer: both hold lines (the first
        batch, reports and the eof batch go alone: the aggregator must hold everything before an
        eof first), with the same exit status (the highest `seq` carrying one wins), while no send
        is failing (then one batch at a time retries)."""
        return (bool(batch.count) and bool(before.count) and not batch.eof and not before.eof
                and batch.exit_code == before.exit_code and self.client.failing is None)

    def _send(self, batch: Batch) -> Flying:
        """Start delivering `batch` under the next `seq`."""
        seq = self.seq
        self.seq += 1
        body = encode_batch(self.ident, seq, batch)
        return batch, seq, asyncio.ensure_future(self.client.deliver(body, self.name))

    async def _deliver(self, batch: Batch, seq: int, out: Outcome) -> None:
        """Take the answer `out` to `batch` (sent as `seq`); deliver what a 413 leaves until
        acknowledged, one request at a time."""
        while True:
            if out.verdict is Verdict.OK:
                await self._acked(batch, seq)
                return
            if seq == self.seq - 1:
                self.seq = seq  # refused, and nothing went out after it: its number is free again
            # 413: halve; a single event too large is reported as dropped rather than lost.
            if batch.count > 1:
                first, second = batch.split()
                log.warning("batch too large for the aggregator; splitting",
                            extra={"stream": self.name, "events": batch.count})
                for half in (first, second):
                    half, half_seq, answer = self._send(half)
                    await self._deliver(half, half_seq, await answer)
                return
            if batch.count:
                drop = Dropped(batch.first_off, 1, batch.end - batch.first_off)
                log.error("a single event is too large for the aggregator; reporting it as dropped",
                          extra={"stream": self.name, "off": batch.first_off})
                count_drop(self.metrics, self.name, self._labels, drop)
                self.outbox.delivered(1)
                batch = batch.without_events(drop)
            else:
                log.error("aggregator answered 413 to a batch without events; waiting",
                          extra={"stream": self.name})
                await asyncio.sleep(self.reject_backoff)
            batch, seq, answer = self._send(batch)
            out = await answer

    async def _acked(self, batch: Batch, seq: int) -> None:
        """`batch` (sent as `seq`) and every batch before it are delivered: checkpoint it, with the
        next `seq` to send (above every number sent, so a restart goes on numbering in order)."""
        cur = batch.cursor
        self.checkpoints.submit(Checkpoint(self.ident.container, cur.dev, cur.ino, cur.pos, cur.base,
                                           self.seq, batch.shipped, eof=batch.eof))
        if batch.eof:
            await self.checkpoints.flush()
        self.acked_off = cur.off
        self.eof_acked = batch.eof
        metrics, container = self.metrics, self.ident.container
        metrics.of(metrics.batches, container).inc()
        self.outbox.delivered(batch.count)
        if batch.count:
            metrics.of(metrics.lines_shipped, container).inc(batch.count)
            metrics.of(metrics.bytes_shipped, container).inc(batch.end - batch.first_off)
        self.on_ack()
        if batch.eof:
            log.info("stream complete", extra={"stream": self.name, "off": cur.off, "seq": seq,
                                               "exit_code": batch.exit_code})


def count_drop(metrics: ShipperMetrics, name: str, labels: dict[str, str], drop: Dropped) -> None:
    """Count and log lines left out of a stream."""
    metrics.lines_dropped.labels(**labels).inc(drop.lines)
    metrics.bytes_dropped.labels(**labels).inc(drop.bytes)
    log.warning("lines left out of the stream", extra={
        "stream": name, "off": drop.off, "lines": drop.lines, "bytes": drop.bytes})
