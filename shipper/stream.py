"""One stream's pipeline: read → sanitise → cap → batch → send → checkpoint.

Two tasks per stream: a producer that reads and forms batches, and a sender that delivers them
one at a time, in order, and checkpoints after each 2xx. A queue of one batch between them keeps
memory bounded (one batch in flight, one waiting, one being built) while reading overlaps sending.

The budget: once `stream_budget_bytes` of log bytes went into batches, lines go to a tail ring
bounded in encoded bytes; lines pushed out of it are counted, and at drain one `dropped` report
covers them, followed by the ring's lines. The checkpoint stays at the budget point meanwhile, so
a restart re-reads (and re-counts) from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from bisect import bisect_left, bisect_right
from collections import deque
from dataclasses import dataclass
from itertools import accumulate
from operator import sub
from pathlib import Path

from blastlogs.protocol import Dropped
from shipper.batch import Batch, Identity, encode_batch, header_reserve, split_batch
from shipper.checkpoints import Checkpoint, Checkpointer
from shipper.client import AggregatorClient, Verdict
from shipper.config import CHECKPOINT_INTERVAL, ShipperConfig
from shipper.metrics import ShipperMetrics
from shipper.prepare import Prepared, prepare
from shipper.reader import Chunk, Cursor, Generation, LineReader
from shipper.redact import CLEAN_STATE, RedactorState
from shipper.sanitise import Sanitiser
from shipper.workers import MAX_QUEUED, Reply, SanitiserPool

log = logging.getLogger("shipper.stream")

_PLUS_ONE = (1).__add__


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
        self.client = client
        self.checkpointer = checkpointer
        self.metrics = metrics
        self.sanitiser = sanitiser
        self.drain = drain
        self.pool = pool
        #: chunks read and being prepared (by the pool), placed into batches in read order
        self.preparing: deque[tuple[Chunk, Reply | Prepared | None]] = deque()
        #: chunks in flight beyond the one being placed: enough to keep every worker's queue full
        self.prepare_depth = pool.size * MAX_QUEUED if pool is not None else 0
        #: the redactor state after the last placed line
        self.red_state: RedactorState = CLEAN_STATE
        self.ident = Identity(config.job_id, config.pod, container, config.phase)
        self.name = f"{config.pod}/{container}"
        self.log_path = config.logs_dir / f"{container}.log"
        self.exit_path = config.logs_dir / f"{container}.exit"
        cp = checkpointer.load(container)
        self.reader = LineReader(self.log_path, config.read_size, config.line_prefix_bytes,
                                 resume=cp.cursor if cp else None)
        self.seq = cp.seq if cp else 0
        self.shipped = cp.shipped if cp else 0
        self.acked_off = cp.off if cp else 0
        self.eof_acked = cp.eof if cp else False
        self.queue: asyncio.Queue[Batch | None] = asyncio.Queue(maxsize=1)
        self.event_budget = config.batch_max_bytes - header_reserve(self.ident)
        self.builder = Batch()
        self.formed = Cursor(0, 0, 0, 0)
        self.formed_shipped = self.shipped
        self.pending_lines = 0
        self.pending_drop: Dropped | None = None
        self.ring: deque[tuple[int, int, bytes]] = deque()
        self.ring_bytes = 0
        self.ring_drop: Dropped | None = None
        self.exit_code: int | None = None
        self.sent_exit_code: int | None = None
        self.in_flight: Batch | None = None
        self.sent_anything = False
        self._queued_bytes = 0
        self._labels = {"container": container}
        self._cp_next: Checkpoint | None = None
        self._cp_written: Checkpoint | None = None
        self._cp_writer: asyncio.Task[None] | None = None
        self._cp_last = 0.0  # time.monotonic() when the last checkpoint write began
        self._cp_hurry = asyncio.Event()  # set at eof and drain: write without pacing

    @property
    def capped(self) -> bool:
        return self.shipped >= self.config.stream_budget_bytes

    # ---- running -------------------------------------------------------------------------

    async def run(self) -> None:
        sender = asyncio.create_task(self._send_loop(), name=f"send {self.container}")
        try:
            await self._produce()
            await sender
            await self._checkpoints_written()
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
            if self.pool is not None:  # a stream that stopped early gives back what it held
                self.pool.held -= len(self.preparing)  # (kept for `undelivered`)
            if self._cp_writer is not None and not self._cp_writer.done():
                self._cp_writer.cancel()  # the write in its thread still completes, whole
                with contextlib.suppress(asyncio.CancelledError):
                    await self._cp_writer
            self.reader.close()

    async def _wait(self, seconds: float) -> None:
        """Sleep, but wake at once when the drain starts."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.drain.wait(), seconds)

    async def _produce(self) -> None:
        while not self.reader.open():
            if self.drain.is_set():
                await self.queue.put(None)
                return
            await self._wait(self.config.poll_interval)
        if self.reader.note:
            log.warning(self.reader.note, extra={"stream": self.name})
        self.formed = self.reader.cursor
        self.exit_code = read_exit_code(self.exit_path)
        if not self.eof_acked:
            await self._flush(force=True)  # the first batch: the aggregator learns of the stream now
        idle_since = time.monotonic()
        while True:
            chunk = self.reader.read()
            if chunk is not None:
                idle_since = time.monotonic()
                if chunk.count:
                    self._submit(chunk)
                    while len(self.preparing) > self.prepare_depth or (
                            self.pool is not None and self.pool.crowded and len(self.preparing) > 1):
                        await self._place_next()
                await self._flush_if_lingered()
                await asyncio.sleep(0)  # let other streams and the sender run between bulk reads
                continue
            if self.preparing:
                # Placing awaits: more lines, and the drain, may arrive meanwhile. Read again before
                # concluding that the file is at its end.
                await self._settle()
                continue
            change = self.reader.check_generation()
            if change is not None:
                tail, gen = change
                if tail is not None:
                    await self._take(tail)
                await self._generation(gen)
                continue
            self._update_lag()
            # logwrap removes the file when a restarted container starts: no status while it runs.
            self.exit_code = read_exit_code(self.exit_path)
            if self.drain.is_set():
                await self._finish()
                return
            if (self.reader.has_partial and self.exit_path.exists()
                    and time.monotonic() - idle_since >= self.config.exit_settle):
                tail = self.reader.flush_partial()
                if tail is not None:
                    await self._take(tail)
            if self.builder.events:
                await self._flush_if_lingered()
            elif self.exit_code != self.sent_exit_code and not self.eof_acked:
                await self._flush(force=True)  # tell the aggregator the exit status promptly
            await self._wait(self.config.poll_interval)

    def _submit(self, chunk: Chunk) -> None:
        """Start preparing `chunk`: in a worker when there is a pool and the chunk is plain lines.

        A chunk is prepared from the redactor state the previous chunk ends in when that is known
        (no chunk in flight), and otherwise from the clean state, which is right unless a PEM block
        or an env entry spans the read boundary; `_place_next` checks and redoes it if not. When
        every worker is busy the chunk is prepared here at once, so this process works beside the
        workers instead of waiting for their answers.
        """
        pending: Reply | Prepared | None = None
        if self.pool is not None and not chunk.extras and chunk.joined is not None:
            guess = CLEAN_STATE if self.preparing else self.red_state
            pending = self.pool.submit(chunk, guess)
            if pending is None:
                pending = prepare(self.sanitiser, chunk, guess)
        self.preparing.append((chunk, pending))
        if self.pool is not None:
            self.pool.held += 1

    async def _place_next(self) -> None:
        chunk, pending = self.preparing[0]
        in_worker = isinstance(pending, asyncio.Future)
        prepared = await pending if isinstance(pending, asyncio.Future) else pending
        self.preparing.popleft()
        if self.pool is not None:
            self.pool.held -= 1
        # worker; shipper (every worker busy, or none); redone (a wrong state guess, a failed worker)
        where = "worker" if in_worker else "shipper"
        if prepared is None or prepared.start != self.red_state:
            where = "redone" if in_worker or prepared is not None else "shipper"
            prepared = prepare(self.sanitiser, chunk, self.red_state)
        if self.pool is not None:
            self.metrics.prepared.labels(where=where).inc()
        self.red_state = prepared.state
        await self._place(chunk, prepared)

    async def _settle(self) -> None:
        """Place every chunk still being prepared, in order."""
        while self.preparing:
            await self._place_next()

    async def _take(self, chunk: Chunk) -> None:
        """Prepare and place one chunk now, after those in flight."""
        self._submit(chunk)
        await self._settle()

    def _count_prepared(self, prepared: Prepared) -> None:
        for kind, count in prepared.redactions.items():
            self.metrics.redacted.labels(kind=kind).inc(count)
        if prepared.truncated:
            self.metrics.truncated.labels(**self._labels).inc(prepared.truncated)

    async def _place(self, chunk: Chunk, prepared: Prepared) -> None:
        """Put a prepared chunk's events into batches, or into the tail ring past the budget.

        Whole runs of lines go into a batch at once: where the batch fills up (events, bytes) or
        the stream budget is reached is found by bisecting running sums, not line by line.
        """
        self.eof_acked = False
        self._count_prepared(prepared)
        offs, events, ts, n = prepared.offs, prepared.events, chunk.ts, len(prepared.offs)
        self.metrics.lines_read.labels(**self._labels).inc(n)
        self.metrics.bytes_read.labels(**self._labels).inc(chunk.end - chunk.first)
        ends = offs[1:]
        ends.append(chunk.end)
        # sizes[k]: bytes of events[:k], each with one separator
        sizes = list(accumulate(map(_PLUS_ONE, map(len, events)), initial=0))
        cur = chunk.cursor
        max_events, budget = self.config.batch_max_events, self.event_budget
        limit = self.config.stream_budget_bytes
        i = 0
        while i < n:
            if self.shipped >= limit:
                self._ring_extend(offs[i:], ends[i:], events[i:])
                return
            b = self.builder
            count = len(b.events)
            first = 0 if count else 1  # no separator before a batch's first event
            if count and (count >= max_events or b.size + sizes[i + 1] - sizes[i] > budget):
                await self._flush()
                continue
            # the most events that fit: by count, by bytes (an empty batch takes one regardless)
            j = min(n, i + max_events - count,
                    max(bisect_right(sizes, budget - b.size + sizes[i] + first, i) - 1, i + first))
            # the line that reaches the stream budget is the last one shipped
            reach = bisect_left(ends, limit - self.shipped + offs[i], i, j)
            if reach < j:
                j = reach + 1
            if not count:
                b.first_ts = ts
            b.events.extend(events[i:j])
            b.offs.extend(offs[i:j])
            b.size += sizes[j] - sizes[i] - first
            self.shipped += ends[j - 1] - offs[i]
            b.cursor = Cursor(cur.dev, cur.ino, ends[j - 1] - cur.base, cur.base)
            b.shipped = self.shipped
            i = j
            if self.shipped >= limit:
                log.warning("stream budget reached; keeping only a tail from here",
                            extra={"stream": self.name, "off": ends[j - 1], "budget": limit})
                await self._flush()

    def _ring_extend(self, offs: list[int], ends: list[int], events: list[bytes]) -> None:
        """Lines past the budget go into the tail ring; the oldest it pushes out are only counted.

        All at once: the ring ends up as the longest suffix within `tail_ring_bytes` (at least
        one line), exactly as if the lines had come one by one.
        """
        ring = self.ring
        ring.extend(zip(offs, map(sub, ends, offs), events, strict=True))
        self.ring_bytes += sum(map(len, events))
        cap = self.config.tail_ring_bytes
        if self.ring_bytes <= cap or len(ring) <= 1:
            return
        first, lines, nbytes = ring[0][0], 0, 0
        while self.ring_bytes > cap and len(ring) > 1:
            _, size, event = ring.popleft()
            self.ring_bytes -= len(event)
            lines += 1
            nbytes += size
        drop = Dropped(first, lines, nbytes)
        self.ring_drop = drop if self.ring_drop is None else self.ring_drop.merge(drop)

    def _ring_clear(self, upto: int) -> Dropped | None:
        """Everything held or dropped in the ring, as one report ending at stream offset `upto`."""
        drop = self.ring_drop
        if self.ring:
            first = self.ring[0][0]
            held = Dropped(first, len(self.ring), upto - first)
            drop = held if drop is None else Dropped(drop.off, drop.lines + held.lines, upto - drop.off)
        self.ring.clear()
        self.ring_bytes = 0
        self.ring_drop = None
        return drop

    async def _generation(self, gen: Generation) -> None:
        """The file was replaced or truncated: close the batch, report losses, move the checkpoint on."""
        log.warning("log file %s; continuing the stream count", gen.reason,
                    extra={"stream": self.name, "off": gen.lost_off, "lost_bytes": gen.lost_bytes})
        await self._flush()
        drop = self._ring_clear(gen.lost_off) if self.capped else None
        if gen.lost_bytes:
            # How many lines the lost bytes held is unknowable; report at least one.
            lost = Dropped(gen.lost_off, 1, gen.lost_bytes)
            drop = lost if drop is None else Dropped(drop.off, drop.lines + 1, gen.lost_off + gen.lost_bytes - drop.off)
        if drop is not None:
            self._count_drop(drop)
            self.pending_drop = drop
        self.formed = gen.cursor
        await self._flush(force=True)

    def _count_drop(self, drop: Dropped) -> None:
        self.metrics.lines_dropped.labels(**self._labels).inc(drop.lines)
        self.metrics.bytes_dropped.labels(**self._labels).inc(drop.bytes)
        log.warning("lines left out of the stream", extra={
            "stream": self.name, "off": drop.off, "lines": drop.lines, "bytes": drop.bytes})

    async def _flush_if_lingered(self) -> None:
        b = self.builder
        if b.events and time.time() - b.first_ts >= self.config.linger:
            await self._flush()

    async def _flush(self, *, force: bool = False, eof: bool = False) -> None:
        """Hand the batch being built to the sender (waits while one is queued already)."""
        b = self.builder
        if not b.events and self.pending_drop is None and not force and not eof:
            return
        if not b.events:
            b.cursor = self.formed
            b.shipped = self.formed_shipped
        b.dropped = self.pending_drop
        b.eof = eof
        b.exit_code = self.exit_code
        self.pending_drop = None
        self.formed = b.cursor
        self.formed_shipped = b.shipped
        self.sent_exit_code = self.exit_code
        self.builder = Batch()
        self._queued_bytes += b.size
        self.pending_lines += len(b.events)
        self.metrics.queue_bytes.labels(**self._labels).set(self._queued_bytes)
        await self.queue.put(b)

    async def _finish(self) -> None:
        """Drain: the unterminated last line, the tail ring, and the eof batch."""
        self._cp_hurry.set()
        tail = self.reader.flush_partial()
        if tail is not None:
            await self._take(tail)
        if self.eof_acked:
            await self.queue.put(None)  # delivered before a restart, and nothing new since
            return
        if self.capped and (self.ring or self.ring_drop):
            await self._flush()
            drop = self.ring_drop
            if drop is not None:
                self._count_drop(drop)
                self.pending_drop = drop
            cur = self.reader.cursor
            b = self.builder
            for off, size, event in self.ring:
                if b.events and (len(b.events) >= self.config.batch_max_events
                                 or b.size + len(event) + 1 > self.event_budget):
                    await self._flush()
                    b = self.builder
                if not b.events:
                    b.first_ts = time.time()
                b.add(off, event)
                b.cursor = Cursor(cur.dev, cur.ino, off + size - cur.base, cur.base)
                b.shipped = self.shipped
            self.ring.clear()
            self.ring_bytes = 0
            self.ring_drop = None
        await self._flush(eof=True)
        await self.queue.put(None)

    # ---- sending -------------------------------------------------------------------------

    async def _send_loop(self) -> None:
        while True:
            batch = await self.queue.get()
            if batch is None:
                return
            self.in_flight = batch
            await self._deliver(batch)
            self.in_flight = None
            self._queued_bytes -= batch.size
            self.metrics.queue_bytes.labels(**self._labels).set(max(self._queued_bytes, 0))

    async def _deliver(self, batch: Batch) -> None:
        while True:
            out = await self.client.deliver(encode_batch(self.ident, self.seq, batch), self.name)
            if out.verdict is Verdict.OK:
                await self._acked(batch)
                return
            # 413: halve; a single event too large is reported as dropped rather than lost.
            if len(batch.events) > 1:
                first, second = split_batch(batch)
                log.warning("batch too large for the aggregator; splitting",
                            extra={"stream": self.name, "events": len(batch.events)})
                await self._deliver(first)
                await self._deliver(second)
                return
            if batch.events:
                size = batch.end - batch.offs[0]
                drop = Dropped(batch.offs[0], 1, size)
                log.error("a single event is too large for the aggregator; reporting it as dropped",
                          extra={"stream": self.name, "off": batch.offs[0]})
                self._count_drop(drop)
                self.pending_lines -= 1
                batch = Batch(cursor=batch.cursor, shipped=batch.shipped, first_ts=batch.first_ts,
                              dropped=drop if batch.dropped is None else batch.dropped.merge(drop),
                              eof=batch.eof, exit_code=batch.exit_code)
                continue
            log.error("aggregator answered 413 to a batch without events; waiting",
                      extra={"stream": self.name})
            await asyncio.sleep(self.config.reject_backoff)

    async def _acked(self, batch: Batch) -> None:
        cur = batch.cursor
        cp = Checkpoint(self.container, cur.dev, cur.ino, cur.pos, cur.base, self.seq + 1,
                        batch.shipped, eof=batch.eof)
        self._checkpoint(cp)
        if batch.eof:
            await self._checkpoints_written()
        self.seq += 1
        self.acked_off = cur.off
        self.eof_acked = batch.eof
        self.sent_anything = True
        self.metrics.batches.labels(**self._labels).inc()
        self.pending_lines -= len(batch.events)
        if batch.events:
            self.metrics.lines_shipped.labels(**self._labels).inc(len(batch.events))
            self.metrics.bytes_shipped.labels(**self._labels).inc(batch.end - batch.offs[0])
        self._update_lag()
        if batch.eof:
            log.info("stream complete", extra={"stream": self.name, "off": cur.off, "seq": self.seq - 1,
                                               "exit_code": batch.exit_code})

    def _checkpoint(self, cp: Checkpoint) -> None:
        """Have `cp` written soon, without holding up the next send (an fsync takes milliseconds).

        One writer at a time, always the newest acknowledged checkpoint, so the file never goes
        back; it may lag the acknowledgements by up to `CHECKPOINT_INTERVAL`, which a restart
        only re-sends. Pacing keeps the fsyncs (and thread hand-offs) to a few per second instead
        of one per batch.
        """
        self._cp_next = cp
        writer = self._cp_writer
        if writer is None or writer.done():
            if writer is not None:
                writer.result()  # a failed write fails the stream, as it did before
            self._cp_writer = asyncio.create_task(self._write_checkpoints(), name=f"checkpoint {self.container}")

    async def _write_checkpoints(self) -> None:
        while self._cp_written is not self._cp_next and self._cp_next is not None:
            wait = self._cp_last + CHECKPOINT_INTERVAL - time.monotonic()
            if wait > 0 and not self._cp_hurry.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._cp_hurry.wait(), wait)
            cp = self._cp_next
            self._cp_last = time.monotonic()
            await asyncio.to_thread(self.checkpointer.save, cp)
            self._cp_written = cp

    async def _checkpoints_written(self) -> None:
        self._cp_hurry.set()
        if self._cp_writer is not None:
            await self._cp_writer

    def _update_lag(self) -> None:
        if self.reader.fd < 0:
            return
        self.metrics.lag_bytes.labels(**self._labels).set(max(self.reader.stream_end() - self.acked_off, 0))
        oldest = self.in_flight.first_ts if self.in_flight and self.in_flight.events else 0.0
        self.metrics.lag_seconds.labels(**self._labels).set(time.time() - oldest if oldest else 0.0)

    def undelivered(self) -> Undelivered:
        pending = (len(self.builder.events) + len(self.ring) + self.pending_lines
                   + sum(len(chunk) for chunk, _ in self.preparing))
        return Undelivered(self.container, self.acked_off, self.reader.stream_end(), pending,
                           self.eof_acked)
