"""`FinalizeWorker`: a replica's finalizes, run in a child process of its own (`aggregator.finalize.child`).

Why a process: a big finalize decodes, merges and encodes millions of lines; in the serving process that
work holds the GIL in worker threads and turns of the event loop, and other jobs' ingests wait behind it
(their p99 rose from 8-20 ms idle to 46-73 ms during a flood's finalize, docs/benchmarks.md). In a child it
runs on its own interpreter and core; the serving loop only writes a request and awaits an answer.

The child speaks frames on its stdin and stdout: a 4-byte big-endian length, then a pickled tuple (both
ends are this package, from one installation). The first frame down is the config; the child answers
`("ready",)` once its store is open. Then `("finalize", id, job_id, wait_seconds, existing_last_output)`,
`("compact", id, job_id, pod, container)` and `("cancel", id)` go down; `("done", id, result, ops)` or
`("failed", id, (class, message, detail), ops)` come up (`result`: the summary's bytes, or whether the
stream was compacted), `ops` being the storage operations the child made since its last answer
(`CountingStore`'s counts), and every `HEARTBEAT_S` `("alive", 0, None, ops)`. Many finalizes and the
replica's ingest-side compactions run in the child at once, sharing one `FinalizeBudget`, as they would
in the serving process.

Cancelling a caller's finalize cancels the child's, and the caller's cancellation is honoured only once the
child's finalize has settled (its writes done or abandoned, its lock released), as in process. If the child
dies, its finalizes fail with `Unavailable` (503: the job API retries); the next finalize starts a new child,
and a lock the dead one held expires within `lock_ttl`. A child that stops talking for `finalize_child_timeout`
(stopped, deadlocked, stuck in the kernel) is killed and counts as dead: otherwise its finalizes would wait
forever, and one woken after its lock expired could still finish a write it had begun.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import pickle
import struct
import sys
from collections.abc import Mapping
from typing import Any

from aggregator.config import AggregatorConfig
from aggregator.errors import AggregatorError, StoreError, Unavailable
from aggregator.fanout import finish_even_if_cancelled
from aggregator.metrics import Metrics

log = logging.getLogger("aggregator.finalize")

#: The child's module, run as `python -m`.
CHILD_MODULE = "aggregator.finalize.child"
#: Seconds the child gets to open its store and say ready; then to exit once its stdin closes.
START_TIMEOUT_S = 60.0
EXIT_TIMEOUT_S = 10.0
#: How often the child says it is alive (`("alive", 0, None, ops)`).
HEARTBEAT_S = 1.0
_LENGTH = struct.Struct(">I")


async def read_frame(reader: asyncio.StreamReader) -> Any:
    """The next frame's object; EOFError when the stream ends (between frames or inside one)."""
    try:
        head = await reader.readexactly(_LENGTH.size)
        return pickle.loads(await reader.readexactly(_LENGTH.unpack(head)[0]))
    except asyncio.IncompleteReadError:
        raise EOFError from None


def frame(obj: object) -> bytes:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(data)) + data


def error_frame(e: AggregatorError) -> tuple[str, str, str]:
    """An error as the child sends it: its class's name, message and client detail (plain strings)."""
    return type(e).__name__, str(e), e.detail


def error_of(kind: str, message: str, detail: str) -> Exception:
    """The child's error, raised again here as its own class (its HTTP answer) where that is one of ours."""
    found: type[AggregatorError] | None = None
    todo: list[type[AggregatorError]] = [AggregatorError]
    while todo and found is None:
        cls = todo.pop()
        if cls.__name__ == kind:
            found = cls
        todo.extend(cls.__subclasses__())
    if found is None:
        return RuntimeError(f"{kind}: {message}")  # a bug in the child: 500, logged here
    if issubclass(found, StoreError):
        found = StoreError  # BlobPutError and the like: a storage failure, whatever their constructor
    return found(message, detail=detail)


class FinalizeWorker:
    """The parent's end: starts the child (again, after it died), sends finalizes, hands back answers."""

    def __init__(self, config: AggregatorConfig, metrics: Metrics) -> None:
        self._config = config
        self._metrics = metrics
        self._proc: asyncio.subprocess.Process | None = None
        #: each finalize sent, by id: the child it went to, and its answer to come
        self._pending: dict[int, tuple[asyncio.subprocess.Process, asyncio.Future[object]]] = {}
        self._ids = itertools.count(1)
        self._starting: asyncio.Lock | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        #: the event loop's time of the child's last frame
        self._heard = 0.0

    async def start(self) -> None:
        """Start the child now (at start-up), so a broken one is said loudly before the first finalize."""
        try:
            await self._ensure()
        except Unavailable as e:
            log.error("finalize worker did not start; finalize answers 503 until one does",
                      extra={"fields": {"error": str(e)}})

    async def finalize(self, job_id: str, wait_seconds: float, existing_last_output: Mapping[str, str]) -> bytes:
        """`finalize_job`'s answer (the summary's bytes) from the child; its errors raised here as they were there."""
        body = await self._call("finalize", job_id, wait_seconds, dict(existing_last_output))
        assert isinstance(body, bytes)
        return body

    async def compact(self, job_id: str, pod: str, container: str) -> bool:
        """`compaction.compact_stream` of one stream in the child (its budget, its CPU); whether it compacted."""
        return bool(await self._call("compact", job_id, pod, container))

    async def _call(self, kind: str, *args: object) -> object:
        """Send a request, await its answer; a cancelled caller cancels it in the child and waits until it settled."""
        proc = await self._ensure()
        rid = next(self._ids)
        done: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._pending[rid] = (proc, done)
        try:
            self._send(proc, (kind, rid, *args))
            try:
                return await asyncio.shield(done)
            except asyncio.CancelledError:
                if not done.done():
                    self._send(proc, ("cancel", rid))
                await finish_even_if_cancelled(_settled(done))
                raise
        finally:
            self._pending.pop(rid, None)

    async def close(self) -> None:
        """Cancel what runs in the child, let it settle and exit (killed after EXIT_TIMEOUT_S)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None and proc.returncode is None:
            for rid, (sent_to, _) in list(self._pending.items()):
                if sent_to is proc:
                    self._send(proc, ("cancel", rid))
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), EXIT_TIMEOUT_S)
        except TimeoutError:
            log.error("finalize worker did not exit; killed", extra={"fields": {"pid": proc.pid}})
            proc.kill()
            await proc.wait()
        if self._reader_task is not None:
            await self._reader_task
        if self._watch_task is not None:
            self._watch_task.cancel()
            await asyncio.gather(self._watch_task, return_exceptions=True)

    async def _ensure(self) -> asyncio.subprocess.Process:
        if self._proc is not None and self._proc.returncode is None:
            return self._proc
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._proc is None or self._proc.returncode is not None:
                self._proc = await self._spawn()
            return self._proc

    async def _spawn(self) -> asyncio.subprocess.Process:
        # stderr is ours: the child's JSON log lines join this process's. The limit fits a big summary.
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", CHILD_MODULE, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            limit=2**20)
        assert proc.stdin is not None and proc.stdout is not None
        self._send(proc, self._config)
        try:
            first = await asyncio.wait_for(read_frame(proc.stdout), START_TIMEOUT_S)
        except (EOFError, TimeoutError, pickle.UnpicklingError):
            first = None
        if first != ("ready",):
            if proc.returncode is None:
                proc.kill()
            code = await proc.wait()
            raise Unavailable(f"the finalize worker did not start (exit code {code}; its log says why)",
                             detail="finalize is unavailable on this replica")
        log.info("finalize worker started", extra={"fields": {"pid": proc.pid}})
        self._heard = asyncio.get_running_loop().time()
        self._reader_task = asyncio.create_task(self._read_answers(proc))
        if self._watch_task is not None:
            self._watch_task.cancel()
        self._watch_task = asyncio.create_task(self._watch(proc))
        return proc

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        """Kill `proc` once it has been silent for `finalize_child_timeout` (its reader then fails its finalizes)."""
        loop, limit = asyncio.get_running_loop(), self._config.finalize_child_timeout
        while proc.returncode is None:
            silent = loop.time() - self._heard
            if silent >= limit:  # unless this loop was the one held up: frames read meanwhile come first
                await asyncio.sleep(0.1)
                silent = loop.time() - self._heard
            if silent >= limit and proc.returncode is None:
                log.error("finalize worker stopped answering; killed", extra={"fields": {
                    "pid": proc.pid, "silent_seconds": round(silent, 1)}})
                proc.kill()
                return
            await asyncio.sleep(min(HEARTBEAT_S, limit - silent))

    def _send(self, proc: asyncio.subprocess.Process, obj: object) -> None:
        assert proc.stdin is not None
        if not proc.stdin.is_closing():
            proc.stdin.write(frame(obj))

    async def _read_answers(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        try:
            while True:
                msg = await read_frame(proc.stdout)
                self._heard = asyncio.get_running_loop().time()
                kind, rid, result, ops = msg
                self._count(ops)
                _, done = self._pending.get(rid, (proc, None))
                if done is None or done.done():
                    continue
                if kind == "done":
                    done.set_result(result)
                else:
                    done.set_exception(error_of(*result))
        except EOFError:
            pass
        code = await proc.wait()
        lost = [done for sent_to, done in self._pending.values() if sent_to is proc and not done.done()]
        if lost:
            log.error("finalize worker exited during finalizes", extra={"fields": {
                "pid": proc.pid, "exit_code": code, "finalizes": len(lost)}})
        for done in lost:
            done.set_exception(Unavailable(f"the finalize worker exited (code {code}) during this finalize",
                                          detail="finalize was interrupted; try again"))

    def _count(self, ops: Mapping[tuple[str, str], float]) -> None:
        for (op, phase), n in ops.items():
            self._metrics.storage_operations.labels(op, phase).inc(n)


async def _settled(done: asyncio.Future[object]) -> None:
    """Wait for `done` to be settled, whatever it settles to (the caller was cancelled: it wants no answer)."""
    try:
        await asyncio.shield(done)
    except Exception:  # the answer is not wanted, only that there is one
        pass
