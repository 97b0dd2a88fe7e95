"""The finalize worker's child process: `python -m aggregator.finalize.child`, started by `FinalizeWorker`.

It reads the config and then requests as frames on stdin, runs each finalize as a task over its own store,
and answers on what was stdout (fd 1 is pointed at stderr first, so nothing but frames reaches the pipe).
When stdin ends (the service is stopping, or died), it cancels what still runs, lets it settle, closes the
store and exits.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from aggregator.app import configured_store, raise_gc_threshold
from aggregator.compaction import compact_stream
from aggregator.config import AggregatorConfig
from aggregator.errors import AggregatorError, Unavailable
from aggregator.fanout import cpu_pool
from aggregator.finalize.job import FinalizeBudget, finalize_job
from aggregator.finalize.worker import HEARTBEAT_S, error_frame, frame, read_frame
from aggregator.logs import setup_logging
from aggregator.metrics import Metrics
from aggregator.storage.phase import CountingStore, storage_phase

log = logging.getLogger("aggregator.finalize")
#: The child's nice value: finalize is batch work, and when both want a CPU the serving process (other
#: jobs' ingests) goes first. Measured on 2 cores (wide, tmpfs store): other jobs' ingest p99 during a
#: finalize 1.4-2.1x idle at 10 against 2.0-4.6x at 0, the finalize itself as fast (docs/benchmarks.md).
NICENESS = 10
#: Threads for storage I/O (asyncio's default count). They keep the service's priority: a thread at nice 10
#: that a busy CPU preempts inside a create, rename or atime update made the serving process's fsyncs wait
#: for it (docs/design.md).
IO_THREADS = min(32, (os.cpu_count() or 1) + 4)
#: Threads for CPU work too big for the loop (`cpu_work`); started by the loop's thread, at its nice value.
CPU_THREADS = 2


def started_threads(workers: int, name: str) -> ThreadPoolExecutor:
    """A pool whose threads all exist on return, started by this thread: a pool otherwise starts them
    lazily from whichever thread submits, and a thread's nice value is its starter's (Linux: per thread)."""
    pool = ThreadPoolExecutor(workers, thread_name_prefix=name)
    gate = threading.Barrier(workers + 1)
    for _ in range(workers):
        pool.submit(gate.wait)
    gate.wait()
    return pool


class Tally:
    """The child's storage operations, handed up with each answer as the counts since the last one."""

    def __init__(self, metrics: Metrics) -> None:
        self._counter = metrics.storage_operations
        self._sent: dict[tuple[str, str], float] = {}

    def since_last(self) -> dict[tuple[str, str], float]:
        now = {(s.labels["op"], s.labels["phase"]): s.value for m in self._counter.collect() for s in m.samples
               if s.name.endswith("_total")}
        delta = {k: v - self._sent.get(k, 0.0) for k, v in now.items() if v != self._sent.get(k, 0.0)}
        self._sent = now
        return delta


async def serve(frames_out: int, io_threads: ThreadPoolExecutor | None = None) -> None:
    loop = asyncio.get_running_loop()
    if io_threads is not None:
        loop.set_default_executor(io_threads)
    cpu_threads = ThreadPoolExecutor(CPU_THREADS, thread_name_prefix="finalize-cpu")
    cpu_pool.set(cpu_threads)
    reader = asyncio.StreamReader(limit=2**20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    # asyncio's own recipe for a StreamWriter over a pipe (FlowControlMixin gives it drain()).
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin,
                                                        os.fdopen(frames_out, "wb"))
    writer = asyncio.StreamWriter(transport, protocol, None, loop)

    async def send(obj: object) -> None:
        writer.write(frame(obj))
        await writer.drain()

    config: AggregatorConfig = await read_frame(reader)
    setup_logging(config.log_level.upper())
    raise_gc_threshold()
    metrics = Metrics()
    store = CountingStore(configured_store(config), metrics.storage_operations)
    tally = Tally(metrics)
    budget = FinalizeBudget()
    running: dict[int, asyncio.Task[None]] = {}

    def work(kind: str, args: tuple[Any, ...]) -> Awaitable[object]:
        """What a request asks for: a finalize (its summary's bytes) or a compaction (whether it compacted)."""
        storage_phase.set(kind)
        if kind == "finalize":
            job_id, wait_seconds, existing = args
            return finalize_job(store, config, job_id, wait_seconds=wait_seconds, existing_last_output=existing,
                                budget=budget)
        return compact_stream(store, budget.reads, config, *args)

    async def run(rid: int, kind: str, args: tuple[Any, ...]) -> None:
        answer: tuple[Any, ...]
        try:
            answer = ("done", rid, await work(kind, args))
        except asyncio.CancelledError:
            answer = ("failed", rid, error_frame(Unavailable(f"{kind} cancelled: the service is stopping")))
        except AggregatorError as e:
            answer = ("failed", rid, error_frame(e))
        except Exception as e:  # a bug: logged here with its traceback; the parent answers 500 (or counts an error)
            log.exception(f"{kind} failed", extra={"fields": {"job_id": args[0]}})
            answer = ("failed", rid, (type(e).__name__, str(e), "internal error"))
        finally:
            running.pop(rid, None)
        await send((*answer, tally.since_last()))

    def answer_unstarted(rid: int, kind: str, task: asyncio.Task[None]) -> None:
        """A task cancelled before its first step never ran `run`, so nothing answered it: answer here
        (the service's caller waits for an answer; a second one for a settled request is ignored)."""
        if task.cancelled():
            running.pop(rid, None)
            error = error_frame(Unavailable(f"{kind} cancelled: the service is stopping"))
            writer.write(frame(("failed", rid, error, tally.since_last())))

    async def beat() -> None:
        """Say this process is alive, so the service can tell a stuck one (`finalize_child_timeout`)."""
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            await send(("alive", 0, None, tally.since_last()))

    await send(("ready",))
    beating = asyncio.create_task(beat())
    try:
        while True:
            try:
                msg = await read_frame(reader)
            except EOFError:
                break
            if msg[0] in ("finalize", "compact"):
                kind, rid, *args = msg
                running[rid] = task = asyncio.create_task(run(rid, kind, tuple(args)))
                task.add_done_callback(partial(answer_unstarted, rid, kind))
            elif msg[0] == "cancel" and msg[1] in running:
                running[msg[1]].cancel()
    finally:
        for task in running.values():
            task.cancel()
        await asyncio.gather(*running.values(), return_exceptions=True)
        beating.cancel()
        await asyncio.gather(beating, return_exceptions=True)
        await store.close()
        writer.close()  # every answer was drained: nothing is left to flush
        cpu_threads.shutdown()


def main() -> None:
    # The service decides when this process ends (by closing its stdin): a Ctrl-C or a SIGTERM sent to the
    # whole process group must not cut a finalize short here while the service still drains.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    io_threads = started_threads(IO_THREADS, "finalize-io")
    os.nice(NICENESS)  # this thread's, and so every thread's it starts from now on
    frames_out = os.dup(1)
    os.dup2(2, 1)  # a stray print goes to the log, never into the frames
    asyncio.run(serve(frames_out, io_threads))


if __name__ == "__main__":
    main()
