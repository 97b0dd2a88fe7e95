"""One stream's pipeline: read → prepare (sanitise, cap, encode) → pack → send → checkpoint.

`Stream` is the reading loop over small parts, each its own module: `Preparer` (chunks in read
order, in sanitising workers or here), `Packer` (batches, the stream budget and its `TailRing`),
`Sender` (delivery and the paced checkpoints, behind an `Outbox` of one batch). Two tasks per
stream: the reading loop, which forms batches, and the sender, which delivers them one at a time,
in order, so reading overlaps sending.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from shipper.batch import Identity, Limits
from shipper.checkpoints import Checkpointer
from shipper.client import AggregatorClient
from shipper.config import ShipperConfig
from shipper.metrics import ShipperMetrics
from shipper.packer import Packer
from shipper.preparing import Preparer
from shipper.reader import Chunk, LineReader
from shipper.sanitise import Sanitiser
from shipper.sender import Outbox, Sender
from shipper.tailring import TailRing
from shipper.workers import SanitiserPool

log = logging.getLogger("shipper.stream")


def read_exit_code(path: Path) -> int | None:
    """The status logwrap recorded, or None when absent or unreadable."""
    try:
        text = path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None
    try:
        return int(text)
    except ValueError:
        return None


@dataclass
class Undelivered:
    container: str
    delivered_off: int
    end_off: int
    lines: int
    eof_delivered: bool

    def describe(self) -> str:
        return (f"{self.container}: delivered up to off {self.delivered_off}, not delivered: "
                f"offsets {self.delivered_off}..{self.end_off} ({self.lines} lines read and pending"
                f"{', plus unread bytes' if self.lines == 0 and self.end_off > self.delivered_off else ''})"
                f"{'' if self.eof_delivered else ', eof not delivered'}")


class Stream:
    def __init__(self, container: str, config: ShipperConfig, client: AggregatorClient,
                 checkpointer: Checkpointer, metrics: ShipperMetrics, sanitiser: Sanitiser,
                 drain: asyncio.Event, pool: SanitiserPool | None = None) -> None:
        self.container = container
        self.config = config
        self.metrics = metrics
        self.drain = drain
        ident = Identity(config.job_id, config.pod, container, config.phase)
        self.name = f"{config.pod}/{container}"
        self.log_path = config.logs_dir / f"{container}.log"
        self.exit_path = config.logs_dir / f"{container}.exit"
        self._labels = {"container": container}
        cp = checkpointer.load(container)
        self.reader = LineReader(self.log_path, config.read_size, config.line_prefix_bytes,
                                 resume=cp.cursor if cp else None)
        self.preparer = Preparer(sanitiser, pool, metrics)
        self.outbox = Outbox(metrics, container)
        self.checkpoints = checkpointer.paced()
        self.sender = Sender(ident, self.name, client, self.outbox, self.checkpoints, metrics,
                             config.reject_backoff, cp, on_ack=self._update_lag)
        self.packer = Packer(self.name, container,
                             Limits.for_body(ident, config.batch_max_events, config.batch_max_bytes),
                             config.stream_budget_bytes, TailRing(config.tail_ring_bytes), config.linger,
                             self.outbox, metrics, shipped=cp.shipped if cp else 0, linger_max=config.linger_max)

    @property
    def seq(self) -> int:
        return self.sender.seq

    @property
    def acked_off(self) -> int:
        return self.sender.acked_off

    # ---- running -------------------------------------------------------------------------

    async def run(self) -> None:
        sender = asyncio.create_task(self.sender.run(), name=f"send {self.container}")
        try:
            await self._produce()
            await sender
            await self.checkpoints.flush()
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
            self.preparer.close()  # a stream that stopped early gives back what it held
            await self.checkpoints.close()
            self.reader.close()

    async def _wait(self, seconds: float) -> None:
        """Sleep, but wake at once when the drain starts."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.drain.wait(), seconds)

    async def _produce(self) -> None:
        reader, packer = self.reader, self.packer
        while not reader.open():
            if self.drain.is_set():
                await self.outbox.close()
                return
            await self._wait(self.config.poll_interval)
        if reader.note:
            log.warning(reader.note, extra={"stream": self.name})
        packer.begin(reader.cursor, read_exit_code(self.exit_path))
        if not self.sender.eof_acked:
            await packer.flush(force=True)  # the first batch: the aggregator learns of the stream now
        idle_since = time.monotonic()
        while True:
            chunk = reader.read()
            if chunk is not None:
                idle_since = time.monotonic()
                if chunk.count:
                    self.preparer.submit(chunk)
                    while self.preparer.full:
                        await self._place_next()
                await packer.flush_if_lingered()
                await asyncio.sleep(0)  # let other streams and the sender run between bulk reads
                continue
            if self.preparer:
                # Placing awaits: more lines, and the drain, may arrive meanwhile. Read again before
                # concluding that the file is at its end.
                await self._settle()
                continue
            change = reader.check_generation()
            if change is not None:
                tail, gen = change
                if tail is not None:
                    await self._take(tail)
                log.warning("log file %s; continuing the stream count", gen.reason,
                            extra={"stream": self.name, "off": gen.lost_off, "lost_bytes": gen.lost_bytes})
                await packer.generation(gen)
                continue
            self._update_lag()
            # logwrap removes the file when a restarted container starts: no status while it runs.
            packer.exit_status(read_exit_code(self.exit_path))
            if self.drain.is_set():
                await self._finish()
                return
            if (reader.has_partial and self.exit_path.exists()
                    and time.monotonic() - idle_since >= self.config.exit_settle):
                tail = reader.flush_partial()
                if tail is not None:
                    await self._take(tail)
            if packer.building:
                await packer.flush_if_lingered()
            elif packer.exit_unsent and not self.sender.eof_acked:
                await packer.flush(force=True)  # tell the aggregator the exit status promptly
            await self._wait(self.config.poll_interval)

    async def _place_next(self) -> None:
        chunk, prepared = await self.preparer.next()
        self.sender.reopened()
        for kind, count in prepared.redactions.items():
            self.metrics.redacted.labels(kind=kind).inc(count)
        if prepared.truncated:
            self.metrics.truncated.labels(**self._labels).inc(prepared.truncated)
        self.metrics.lines_read.labels(**self._labels).inc(len(prepared.offs))
        self.metrics.bytes_read.labels(**self._labels).inc(chunk.end - chunk.first)
        await self.packer.place(chunk, prepared)

    async def _settle(self) -> None:
        """Place every chunk still being prepared, in order."""
        while self.preparer:
            await self._place_next()

    async def _take(self, chunk: Chunk) -> None:
        """Prepare and place one chunk now, after those in flight."""
        self.preparer.submit(chunk)
        await self._settle()

    async def _finish(self) -> None:
        """Drain: the unterminated last line, then the tail ring and the eof batch."""
        self.checkpoints.hurry()
        tail = self.reader.flush_partial()
        if tail is not None:
            await self._take(tail)
        if self.sender.eof_acked:
            await self.outbox.close()  # delivered before a restart, and nothing new since
            return
        await self.packer.finish(self.reader.cursor)

    def _update_lag(self) -> None:
        if not self.reader.is_open:
            return
        self.metrics.lag_bytes.labels(**self._labels).set(
            max(self.reader.stream_end() - self.sender.acked_off, 0))
        flying = self.sender.in_flight
        oldest = flying.first_ts if flying and flying.events else 0.0
        self.metrics.lag_seconds.labels(**self._labels).set(time.time() - oldest if oldest else 0.0)

    def undelivered(self) -> Undelivered:
        pending = self.packer.lines() + self.outbox.lines + self.preparer.lines()
        return Undelivered(self.container, self.sender.acked_off, self.reader.stream_end(), pending,
                           self.sender.eof_acked)
