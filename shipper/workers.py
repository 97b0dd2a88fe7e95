"""`SanitiserPool`: sanitising worker processes, fed chunks and answering in order.

Each worker (`shipper.sanitise_worker`) answers its requests first in, first out; the pool hands a
chunk to the worker with the fewest outstanding, and gives back a future per chunk. No future
(`submit` returns None) when every worker already holds `MAX_QUEUED` chunks: the stream prepares
that chunk itself, so a flood is shared between the workers and the shipper's own process in
proportion to their speed, and memory stays bounded however many streams there are. A future
whose result is None means the same: the worker failed on the chunk or died. Nothing is lost
that way, only parallelism: the stream prepares the chunk from the redactor state it knows
exactly. A worker that dies is started again after `RESPAWN_DELAY`; the pool never waits on a
worker to make progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
from collections import deque
from dataclasses import dataclass, field
from typing import Final

from shipper.metrics import ShipperMetrics
from shipper.prepare import Prepared
from shipper.reader import Chunk
from shipper.redact import RedactorState
from shipper.sanitise_worker import REPLY, decode_reply, encode_request, reply_body_size
from shipper.worker_process import spawn_worker

log = logging.getLogger("shipper.workers")

#: Seconds before a worker that exited is started again.
RESPAWN_DELAY: Final = 1.0
#: Seconds a worker gets to exit after its stdin closes, before it is killed.
STOP_TIMEOUT: Final = 2.0
#: Chunks a worker holds at most (one being prepared, the rest waiting in its pipe). Deep enough
#: that the worker keeps busy while the shipper's thread batches and sends. Measured with one
#: worker, 1,000,000 bench lines, two runs of four alternating rounds: 2 gave medians of 269,000
#: and 239,000 lines/s, 10 gave 365,000 and 288,000 (faster in all eight rounds), 16 no better; each
#: chunk in flight costs its read (up to 256 KiB, kept for an exact redo) and its answer: about
#: 10 MiB more at 10 than at 2.
MAX_QUEUED: Final = 10

Reply = asyncio.Future[Prepared | None]


@dataclass(eq=False)
class _Worker:
    proc: subprocess.Popen[bytes]
    stdin: asyncio.WriteTransport
    stdout: asyncio.StreamReader
    waiting: deque[tuple[Reply, Chunk, RedactorState]] = field(default_factory=deque)
    alive: bool = True
    replies: asyncio.Task[None] | None = None

    async def exited(self) -> int:
        """The exit status once the process is gone."""
        return await asyncio.to_thread(self.proc.wait)


class SanitiserPool:
    def __init__(self, size: int, max_line_chars: int, started: list[subprocess.Popen[bytes]] | None = None,
                 metrics: ShipperMetrics | None = None) -> None:
        self.size = size
        self.metrics = metrics
        self.max_line_chars = max_line_chars
        self.workers: list[_Worker] = []
        self._started = list(started or [])
        #: chunks read and not yet placed, over every stream (in workers, prepared here, or waiting)
        self.held = 0
        self._closing = False
        self._respawns: set[asyncio.Task[None]] = set()

    @property
    def live(self) -> int:
        return sum(w.alive for w in self.workers)

    @property
    def crowded(self) -> bool:
        """More chunks held, over all streams, than the workers' queues take: a stream that holds
        more than one should place before it reads on, so memory stays bounded however many
        streams flood at once (one stream alone never waits on this)."""
        return self.held > self.size * MAX_QUEUED

    def hold(self) -> None:
        """A stream read one more chunk it has not placed yet."""
        self.held += 1

    def release(self, count: int = 1) -> None:
        """A stream placed (or, stopping, gave up) `count` chunks it held."""
        self.held -= count

    async def start(self) -> None:
        """Adopt the workers started already (`spawn_worker`) and start the rest of `size`."""
        started, self._started = self._started, []
        for proc in started:
            await self._adopt(proc)
        for _ in range(self.size - len(started)):
            await self._spawn()

    async def _spawn(self) -> None:
        try:
            proc = spawn_worker(self.max_line_chars)
        except OSError as exc:
            log.error("cannot start a sanitising worker; sanitising in the shipper's own process",
                      extra={"error": str(exc)})
            return
        await self._adopt(proc)

    async def _adopt(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), proc.stdout)
        stdin, _ = await loop.connect_write_pipe(asyncio.BaseProtocol, proc.stdin)
        worker = _Worker(proc, stdin, reader)
        worker.replies = asyncio.create_task(self._read_replies(worker), name=f"sanitise worker {proc.pid}")
        self.workers.append(worker)
        self._count_live()

    def _count_live(self) -> None:
        if self.metrics is not None:
            self.metrics.workers.set(self.live)

    def submit(self, chunk: Chunk, start: RedactorState) -> Reply | None:
        """Prepare `chunk` (complete lines, `joined` set) from redactor state `start` in a worker;
        None when no worker can take it now."""
        live = [w for w in self.workers if w.alive and len(w.waiting) < MAX_QUEUED]
        if not live or chunk.joined is None:
            return None
        fut: Reply = asyncio.get_running_loop().create_future()
        worker = min(live, key=lambda w: len(w.waiting))
        worker.waiting.append((fut, chunk, start))
        worker.stdin.writelines(encode_request(chunk, start))
        return fut

    async def _read_replies(self, worker: _Worker) -> None:
        stdout = worker.stdout
        try:
            while True:
                head = await stdout.readexactly(REPLY.size)
                body = await stdout.readexactly(reply_body_size(head))
                fut, chunk, start = worker.waiting.popleft()
                if not fut.done():
                    fut.set_result(decode_reply(head, body, chunk, start))
        except (asyncio.IncompleteReadError, ConnectionError, IndexError):
            pass
        finally:
            worker.alive = False
            self._count_live()
            while worker.waiting:
                fut, _, _ = worker.waiting.popleft()
                if not fut.done():
                    fut.set_result(None)
            worker.stdin.close()
            if not self._closing:
                code = await worker.exited()
                log.error("a sanitising worker exited; its chunks are sanitised in the shipper's own "
                          "process until it is back", extra={"pid": worker.proc.pid, "status": code})
                self.workers.remove(worker)
                task = asyncio.create_task(self._respawn())
                self._respawns.add(task)
                task.add_done_callback(self._respawns.discard)

    async def _respawn(self) -> None:
        await asyncio.sleep(RESPAWN_DELAY)
        if not self._closing:
            if self.metrics is not None:
                self.metrics.worker_restarts.inc()
            await self._spawn()

    async def close(self) -> None:
        """Close every worker's stdin and wait for it to exit (killing it after `STOP_TIMEOUT`)."""
        self._closing = True
        for task in list(self._respawns):
            task.cancel()
        for proc in self._started:  # started but never adopted
            proc.kill()
            proc.wait()
        for w in self.workers:
            w.stdin.close()
        for w in self.workers:
            try:
                await asyncio.wait_for(w.exited(), STOP_TIMEOUT)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    w.proc.kill()
                await w.exited()
            if w.replies is not None:
                w.replies.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await w.replies
