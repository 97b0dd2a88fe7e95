"""Ingest-side compaction: a stream's staged batches merged into one compacted object soon after its
eof (or every `COMPACT_BATCHES` batches this replica stored of it), so a job's first finalize reads
about one object per stream instead of every batch (docs/design.md, "Big jobs (issue 16)").

It runs in the background, after the ingest's answer, a few streams at a time; it never fails an
ingest (errors are logged and counted). It is finalize's own step (`StagingReader.load_stream`): the
compacted object covers every batch read and is written before any of them is deleted, and a listed
object found gone makes it list the stream again, so compactions of a stream only grow.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from aggregator.config import AggregatorConfig
from aggregator.fanout import Budget
from aggregator.finalize.job import FINALIZE_READ_WEIGHT
from aggregator.finalize.streams import StagingReader
from aggregator.metrics import Metrics
from aggregator.model import StoredBatch
from aggregator.storage import Store
from aggregator.storage.base import delete_keys
from aggregator.storage.phase import storage_phase

log = logging.getLogger("aggregator.compaction")

#: Streams compacted at once per replica, and only while their weights (batches covered) fit the
#: replica's budget, which its finalizes share: the budget bounds memory, this the storage requests
#: in flight (on Azure a compaction mostly waits: 2 at once left 2,000 eof compactions unsettled 300 s
#: after a 1,000-pod job's ingest on Azurite).
COMPACT_CONCURRENCY = 8
#: Staged objects one compaction reads at once.
COMPACT_READS = 8
#: Streams whose batch counts are kept (a stream that never reaches eof is forgotten beyond this).
MAX_COUNTED_STREAMS = 100_000

Stream = tuple[str, str, str]  # job, pod, container
#: Where a compaction runs instead of here: the finalize child (`FinalizeWorker.compact`); True when it compacted.
Runner = Callable[[str, str, str], Awaitable[bool]]


async def compact_stream(store: Store, budget: Budget, config: AggregatorConfig,
                         job_id: str, pod: str, container: str) -> bool:
    """Merge the stream's staged objects into one compacted object; delete what it makes redundant
    (unless `STAGING_RETENTION` is `all`). False when the stream has nothing staged."""
    reader = StagingReader(store, job_id, COMPACT_READS)
    listed = await reader.relist(pod, container)
    async with budget.hold(listed.weight()):  # a flood stream is not merged beside another
        loaded = await reader.load_stream(listed, ends=(0, 0))  # its state is not needed: no events
    if loaded is None:
        return False
    if loaded.redundant and config.staging_retention == "compacted":
        await delete_keys(store, loaded.redundant, COMPACT_READS)
    return True


class Compactor:
    """Schedules background compactions and runs them, here or in the finalize child (`runner`: then they
    draw on the child's budget with its finalizes, and their CPU is the child's); `running()` is its
    lifetime (cancels what is left)."""

    def __init__(self, config: AggregatorConfig, metrics: Metrics, store: Callable[[], Store],
                 budget: Budget | None = None, runner: Runner | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self.store = store
        self.budget = budget or Budget(FINALIZE_READ_WEIGHT)
        self.runner = runner
        self._sem = asyncio.Semaphore(COMPACT_CONCURRENCY)
        self._tasks: set[asyncio.Task[None]] = set()
        #: batches stored since the stream's last scheduled compaction
        self._since: dict[Stream, int] = {}
        #: streams being compacted -> whether another batch asked for a compaction meanwhile
        self._again: dict[Stream, bool] = {}
        self._closed = False

    def stored(self, batch: StoredBatch, *, created: bool) -> None:
        """Ingest stored `batch` (`created`: a new object): compact its stream on eof, or after
        `compact_batches` new batches. Only schedules: returns at once."""
        stream = (batch.job_id, batch.pod, batch.container)
        count = self._since.pop(stream, 0) + int(created)
        if batch.eof or count >= self.config.compact_batches:
            self._schedule(stream)
            return
        if len(self._since) >= MAX_COUNTED_STREAMS:
            self._since.pop(next(iter(self._since)))
        self._since[stream] = count

    def _schedule(self, stream: Stream) -> None:
        if self._closed:
            return
        if stream in self._again:
            self._again[stream] = True
            return
        self._again[stream] = False
        task = asyncio.create_task(self._run(stream))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, stream: Stream) -> None:
        storage_phase.set("compact")
        try:
            # a batch re-sent to another replica within the delay still finds its object (duplicate)
            await asyncio.sleep(self.config.compact_delay)
            while True:
                self._again[stream] = False
                async with self._sem:
                    await self.compact(*stream)
                if not self._again[stream]:
                    return
        except asyncio.CancelledError:
            raise
        except Exception as e:  # never raised: the batches stay for finalize, which compacts them itself
            self.metrics.compactions.labels("error").inc()
            log.warning("compaction failed", extra={"fields": {"job_id": stream[0], "error": repr(e)}})
        finally:
            self._again.pop(stream, None)

    async def compact(self, job_id: str, pod: str, container: str) -> None:
        """`compact_stream`, by the runner or here, counted."""
        if self.runner is not None:
            done = await self.runner(job_id, pod, container)
        else:
            done = await compact_stream(self.store(), self.budget, self.config, job_id, pod, container)
        if done:
            self.metrics.compactions.labels("done").inc()

    async def drain(self) -> None:
        """Cancel what is scheduled or running and wait until it has settled (stores settle a cancelled
        write before returning): nothing is written after the store closes."""
        self._closed = True
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await self.drain()
