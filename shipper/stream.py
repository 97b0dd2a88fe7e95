"""One stream's pipeline: read → prepare (sanitise, cap, encode) → pack → send → checkpoint.

`Stream` is the reading loop over small parts, each its own module: `Preparer` (chunks in read
order, in sanitising workers or here), `Packer` (batches, the stream budget and its `TailRing`),
`Sender` (delivery and the paced checkpoints, behind an `Outbox` of `OUTBOX_DEPTH` batches). Two
tasks per stream: the reading loop, which forms batches, and the sender, which delivers them in
order (up to `PIPELINE` on the wire), so reading overlaps sending.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

from shipper.batch import Identity, Limits
from shipper.checkpoints import Checkpoint, Checkpointer
from shipper.client import AggregatorClient
from shipper.config import ShipperConfig
from shipper.metrics import ShipperMetrics
from shipper.openfiles import OpenFiles
from shipper.packer import Packer
from shipper.preparing import Preparer
from shipper.reader import Chunk, LineReader, fingerprint_at
from shipper.reclaim import Reclaimer
from shipper.sanitise import Sanitiser
from shipper.sender import Outbox, Sender
from shipper.tailring import TailRing
from shipper.volumefiles import read_small, volume_device
from shipper.workers import SanitiserPool

log = logging.getLogger("shipper.stream")


#: Seconds an idle stream sleeps when the watcher does not wake it (a fallback only).
IDLE_RECHECK: Final = 30.0
#: An exit file holds a status in decimal digits and a newline; anything longer is not one.
EXIT_FILE_CAP: Final = 32


def read_exit_code(path: Path, dev: int | None = None) -> int | None:
    """The status logwrap recorded, or None when absent, unreadable, refused or not a status
    (`read_small`: a regular file of the volume, at most `EXIT_FILE_CAP` bytes)."""
    data = read_small(path, EXIT_FILE_CAP, dev)
    if data is None:
        return None
    try:
        return int(data.decode("ascii").strip())
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
                 drain: asyncio.Event, pool: SanitiserPool | None = None,
                 on_risk: Callable[[str, str | None], None] | None = None,
                 open_files: OpenFiles | None = None) -> None:
        self.container = container
        self.config = config
        self.metrics = metrics
        self.drain = drain
        ident = Identity(config.job_id, config.pod, container, config.phase)
        self.name = f"{config.pod}/{container}"
        self.log_path = config.logs_dir / f"{container}.log"
        self.exit_path = config.logs_dir / f"{container}.exit"
        self._refused = ""
        cp = checkpointer.load(container)
        self.volume_dev = volume_device(config.logs_dir)
        self.reader = LineReader(self.log_path, config.read_size, config.line_prefix_bytes,
                                 resume=cp.cursor if cp else None, resume_fp=cp.fp if cp else "",
                                 volume_dev=self.volume_dev, files=open_files)
        #: set when the watcher saw the stream's files change, or the drain began
        self._wake = asyncio.Event()
        self.preparer = Preparer(sanitiser, pool, metrics)
        self.outbox = Outbox(metrics, container)
        self.checkpoints = checkpointer.paced(stamp=self._stamp)
        self.sender = Sender(ident, self.name, client, self.outbox, self.checkpoints, metrics,
                             config.reject_backoff, cp, on_ack=self._update_lag)
        self.packer = Packer(self.name, container,
                             Limits.for_body(ident, config.batch_max_events, config.batch_max_bytes),
                             config.stream_budget_bytes,
                             TailRing(config.tail_ring_bytes, config.drop_report_bytes), config.linger,
                             self.outbox, metrics, shipped=cp.shipped if cp else 0,
                             linger_max=config.linger_max)
        #: gives back the volume space before the newest checkpoint on disk, after each ack
        self.reclaimer = Reclaimer(self.log_path, container, metrics, on_risk) if config.reclaim else None
        self.sender.on_ack = self._acked

    def _acked(self) -> None:
        self._update_lag()
        if self.reclaimer is not None:
            self.reclaimer.follow(lambda: self.checkpoints.written, lambda: self.sender.acked_off,
                                  self.checkpoints.interval)

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
            if self.reclaimer is not None:
                await self.reclaimer.close()
            self.reader.close()

    def wake(self) -> None:
        """The stream's files changed (or the drain began): look at them now."""
        self._wake.set()

    async def _wait(self, seconds: float) -> None:
        """Sleep until woken (`wake`) or for `seconds`; not at all once the drain started."""
        if self.drain.is_set():
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        self._wake.clear()

    def _idle_wait(self) -> float:
        """How long to sleep at the end of the file: a poll interval while a batch lingers or an
        unterminated line waits for its exit to settle, else until the watcher wakes us (with a
        long fallback, should a change escape it)."""
        if self.packer.building or self.reader.has_partial:
            return self.config.poll_interval
        return IDLE_RECHECK

    async def _produce(self) -> None:
        reader, packer = self.reader, self.packer
        while not reader.open():
            self._note_refusal()
            if self.drain.is_set():
                await self.outbox.close()
                return
            await self._wait(self.config.poll_interval)
        if reader.note:
            log.warning(reader.note, extra={"stream": self.name})
        packer.begin(reader.cursor, read_exit_code(self.exit_path, self.volume_dev))
        if reader.lost is not None:
            await packer.generation(reader.lost)  # the first batch, reporting what the change lost
        elif not self.sender.eof_acked:
            await packer.flush(force=True)  # the first batch: the aggregator learns of the stream now
        idle_since = time.monotonic()
        burst = 0  # bytes read since the end of the file was last reached
        while True:
            pos = reader.pos
            chunk = reader.read()
            if chunk is not None:
                idle_since = time.monotonic()
                burst += max(reader.pos - pos, 0)
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
            self._note_refusal()
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
            packer.exit_status(read_exit_code(self.exit_path, self.volume_dev))
            if self.drain.is_set():
                await self._finish()
                return
            if (reader.has_partial and packer.exit_code is not None  # its exit file, as just read
                    and time.monotonic() - idle_since >= self.config.exit_settle):
                tail = reader.flush_partial()
                if tail is not None:
                    await self._take(tail)
            if packer.building and burst >= self.config.read_size:
                # A backlog read in bulk: its last lines waited in the file, not for company, and
                # lingering would only delay them (a file read to its end: `linger` plus a poll).
                await packer.flush()
            elif packer.building:
                await packer.flush_if_lingered()
            elif packer.exit_unsent and not self.sender.eof_acked:
                await packer.flush(force=True)  # tell the aggregator the exit status promptly
            burst = 0
            await self._wait(self._idle_wait())

    def _stamp(self, cp: Checkpoint) -> Checkpoint:
        """The checkpoint with the fingerprint of the bytes before its position (a thread runs this)."""
        return replace(cp, fp=fingerprint_at(self.log_path, cp.dev, cp.ino, cp.pos, self.volume_dev))

    def _note_refusal(self) -> None:
        """Log once each time the log's path starts naming something that is never read."""
        why = self.reader.refused
        if why != self._refused:
            self._refused = why
            if why:
                log.error("log file not read: only regular files of the volume are, once they open",
                          extra={"stream": self.name, "file": self.log_path.name, "reason": why})

    async def _place_next(self) -> None:
        chunk, prepared = await self.preparer.next()
        self.sender.reopened()
        metrics, container = self.metrics, self.container
        for kind, count in prepared.redactions.items():
            metrics.of(metrics.redacted, kind).inc(count)
        if prepared.truncated:
            metrics.of(metrics.truncated, container).inc(prepared.truncated)
        metrics.of(metrics.lines_read, container).inc(len(prepared))
        metrics.of(metrics.bytes_read, container).inc(chunk.end - chunk.first)
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
        metrics = self.metrics
        metrics.of(metrics.lag_bytes, self.container).set(max(self.reader.stream_end() - self.sender.acked_off, 0))
        flying = self.sender.in_flight
        oldest = flying.first_ts if flying and flying.count else 0.0
        metrics.of(metrics.lag_seconds, self.container).set(time.time() - oldest if oldest else 0.0)

    def undelivered(self) -> Undelivered:
        pending = self.packer.lines() + self.outbox.lines + self.preparer.lines()
        return Undelivered(self.container, self.sender.acked_off, self.reader.stream_end(), pending,
                           self.sender.eof_acked)
