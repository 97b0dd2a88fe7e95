"""`Packer`: forms a stream's batches from its prepared lines and hands them to the sender.

It holds the batch being built, the stream budget and the tail ring past it, and the `dropped`
report that goes with the next batch. Whole runs of lines go into a batch at once, as views of the
read's one buffer of events (`Events`): where the batch fills up (`Batch.fitting`) or the stream
budget is reached is found by bisecting the event starts and the line offsets, without a Python
step or object per line. The budget: once `stream_budget_bytes` of log bytes went into batches, lines go to
the tail ring, and at drain one `dropped` report covers those it pushed out, followed by the ring's
lines. The checkpoint stays at the budget point meanwhile, so a restart re-reads (and re-counts)
from there; except that each report the ring cuts (its `report_bytes`) is sent at once (an empty batch
with a `dropped` report) and resumes where it ends, so that the checkpoint moves past what was left
out and its volume space is given back (`shipper.reclaim`).
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_left

from blastlogs.protocol import Dropped
from shipper.batch import Batch, Events, Limits
from shipper.metrics import ShipperMetrics
from shipper.prepare import Prepared
from shipper.reader import Chunk, Cursor, Generation
from shipper.sender import Outbox, count_drop
from shipper.tailring import TailRing

log = logging.getLogger("shipper.stream")


#: A batch with fewer events than this waits up to `linger_max`, not `linger`, for company.
LINGER_COMPANY = 2
DEFAULT_LINGER_MAX = 1.5


class Packer:
    def __init__(self, name: str, container: str, limits: Limits, budget: int, ring: TailRing,
                 linger: float, outbox: Outbox, metrics: ShipperMetrics, shipped: int = 0, *,
                 linger_max: float = DEFAULT_LINGER_MAX) -> None:
        self.name = name
        self.limits = limits
        #: log bytes a stream ships before only a tail is kept, and how many it shipped
        self.budget = budget
        self.shipped = shipped
        self.ring = ring
        self.linger = linger
        #: a lone line waits this long for a second one: a stream printing a line a second sends a
        #: batch of two about every two seconds (<= 1,800 requests an hour), each line late by < 2 s
        self.linger_max = max(linger, linger_max)
        self.outbox = outbox
        self.metrics = metrics
        self._labels = {"container": container}
        self.builder = Batch()
        #: where the last batch formed ends (an empty batch resumes there)
        self.formed = Cursor(0, 0, 0, 0)
        self.formed_shipped = shipped
        #: the report for the next batch
        self.pending_drop: Dropped | None = None
        #: the container's exit status as last read, and as last sent
        self.exit_code: int | None = None
        self.sent_exit_code: int | None = None

    @property
    def capped(self) -> bool:
        return self.shipped >= self.budget

    @property
    def building(self) -> bool:
        """A batch with events is being built."""
        return bool(self.builder.count)

    @property
    def exit_unsent(self) -> bool:
        """The container's exit status changed since the last batch carried it."""
        return self.exit_code != self.sent_exit_code

    def begin(self, cursor: Cursor, exit_code: int | None) -> None:
        """The reader opened the file at `cursor` (an empty batch resumes there)."""
        self.formed = cursor
        self.exit_code = exit_code

    def exit_status(self, exit_code: int | None) -> None:
        """The container's exit status as just read (None while it runs); the next batch carries it."""
        self.exit_code = exit_code

    def lines(self) -> int:
        """Lines held here: in the batch being built and in the tail ring."""
        return self.builder.count + len(self.ring)

    async def place(self, chunk: Chunk, prepared: Prepared) -> None:
        """Put a prepared chunk's events into batches, or into the tail ring past the budget."""
        await self._pack(prepared.encoded, chunk.ts, chunk.cursor, budgeted=True)

    async def _pack(self, run: Events, ts: float, cur: Cursor, *, budgeted: bool) -> None:
        """Events (with their lines' stream offsets) into batches, flushing each as it fills;
        `budgeted`: counted against the stream budget, the rest going to the ring."""
        limits, limit = self.limits, self.budget
        offs, bounds = run.offs, run.bounds
        i, n = 0, len(run)
        while i < n:
            if budgeted and self.shipped >= limit:
                self.ring.extend(offs[i:n], offs[i + 1:], run.events(i))
                await self._report_pushed_out(cur)
                return
            b = self.builder
            if b.full_for(bounds[i + 1] - bounds[i] - 1, limits):
                await self.flush()
                continue
            j, _ = b.fitting(run, i, n, limits)
            if budgeted:
                # the line that reaches the stream budget (ends at or past it) is the last one shipped
                j = min(j, bisect_left(offs, limit - self.shipped + offs[i], i + 1, j))
                self.shipped += offs[j] - offs[i]
            b.take(run, i, j, ts)
            b.resume_at(Cursor(cur.dev, cur.ino, offs[j] - cur.base, cur.base), self.shipped)
            i = j
            if budgeted and self.shipped >= limit:
                log.warning("stream budget reached; keeping only a tail from here",
                            extra={"stream": self.name, "off": offs[j], "budget": limit})
                await self.flush()
            elif b.full(limits):
                await self.flush()  # it takes no more lines: waiting for the next one, or for
                # `linger` at the end of the file, would only delay it

    async def flush(self, *, force: bool = False, eof: bool = False) -> None:
        """Hand the batch being built to the sender (waits while the outbox is full); an empty
        one only when `force`d, at eof, or to carry a dropped report."""
        b = self.builder
        if not b.count and self.pending_drop is None and not force and not eof:
            return
        if not b.count:
            b.resume_at(self.formed, self.formed_shipped)
        b.seal(self.pending_drop, eof, self.exit_code)
        self.pending_drop = None
        self.formed = b.cursor
        self.formed_shipped = b.shipped
        self.sent_exit_code = self.exit_code
        self.builder = Batch()
        await self.outbox.put(b)

    async def flush_if_lingered(self) -> None:
        """Flush a batch whose first line waited `linger` seconds, or `linger_max` while it holds
        fewer than `LINGER_COMPANY` lines of a still running container (a quiet stream: one request
        per line would be wasteful; an exited container's lines get no company)."""
        b = self.builder
        if not b.count:
            return
        waited = time.time() - b.first_ts
        alone = b.count < LINGER_COMPANY and self.exit_code is None
        if waited >= (self.linger_max if alone else self.linger):
            await self.flush()

    async def _report_pushed_out(self, cur: Cursor) -> None:
        """Past the budget: each report the ring formed (`report_bytes`) goes out at once, in an
        empty batch that resumes where it ends (in the generation `cur` names)."""
        for drop in self.ring.take_reports():
            await self.flush()
            self._report(drop)
            end = drop.off + drop.bytes
            self.formed = Cursor(cur.dev, cur.ino, end - cur.base, cur.base)
            await self.flush()

    def _report(self, drop: Dropped) -> None:
        count_drop(self.metrics, self.name, self._labels, drop)
        self.pending_drop = drop

    async def generation(self, gen: Generation) -> None:
        """The file was replaced or truncated: close the batch, report what the ring held and the
        bytes lost, and go on from the new generation."""
        await self.flush()
        drop = self.ring.discard(gen.lost_off) if self.capped else None
        if gen.lost_bytes or not gen.exact:
            # How many lines the lost bytes held is unknowable; report at least one (and, when even
            # the bytes are unknowable, a report that is not `exact`).
            lost = Dropped(gen.lost_off, 1, gen.lost_bytes, gen.exact)
            drop = lost if drop is None else Dropped(drop.off, drop.lines + 1,
                                                     gen.lost_off + gen.lost_bytes - drop.off, gen.exact)
        if drop is not None:
            self._report(drop)
        self.formed = gen.cursor
        await self.flush(force=True)

    async def finish(self, cur: Cursor) -> None:
        """Drain: the tail ring's report and lines (of the generation `cur` names), then the eof
        batch, and no more batches."""
        if self.capped and not self.ring.empty:
            await self.flush()
            if self.ring.dropped is not None:
                self._report(self.ring.dropped)
            held = list(self.ring.lines)  # consecutive lines: each ends where the next starts
            if held:
                await self._pack(Events.of([event for _, _, event in held], [off for off, _, _ in held],
                                       held[-1][0] + held[-1][1]), time.time(), cur, budgeted=False)
            self.ring.clear()
        await self.flush(eof=True)
        await self.outbox.close()
