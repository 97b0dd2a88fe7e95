"""Structured concurrency for storage work: nothing we started outlives the call that started it.

`asyncio.gather` leaves siblings running when one fails, and cancelling a task that waits on a
thread (LocalStore) leaves the thread writing. Finalize holds a lock while it writes, so a write
that lands after the lock was released can overwrite a later finalize's chunk. These helpers make
"returned or raised" mean "every write we started has finished".
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from concurrent.futures import Executor
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, TypeVar

T = TypeVar("T")


async def finish_even_if_cancelled(aw: Awaitable[T]) -> T:
    """Await `aw`; if we are cancelled meanwhile, still wait for it to end, then re-raise the cancel.

    For operations that cannot be stopped halfway (a write in a thread, a request already sent):
    the caller's cancellation is honoured, but only once the operation has settled.
    """
    task = asyncio.ensure_future(aw)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await _settle({task})
        raise


class Budget:
    """Units of something scarce (memory: staged batches' worth) shared by whoever draws on it: a weighted
    semaphore, first come first served. One per replica bounds every finalize and compaction at once by
    what one alone may hold; a draw heavier than the whole is cut to it (it runs alone)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(capacity, 1)
        self.used = 0
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()

    def fit(self, weight: int) -> int:
        return min(max(weight, 1), self.capacity)

    def try_take(self, weight: int) -> bool:
        """Take `weight` units now if they are free and nobody waits (no cut: False when it is too heavy)."""
        if self._waiting or self.used + weight > self.capacity:
            return False
        self.used += weight
        return True

    async def take(self, weight: int) -> int:
        """Wait for `fit(weight)` units, in turn; what was taken (give it back with `give`)."""
        weight = self.fit(weight)
        if self.try_take(weight):
            return weight
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((weight, turn))
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():  # granted just as we were cancelled
                self.give(weight)
            else:
                self._waiting.remove((weight, turn))
                self._wake()
            raise
        return weight

    def give(self, weight: int) -> None:
        self.used -= weight
        self._wake()

    def _wake(self) -> None:
        while self._waiting and self.used + self._waiting[0][0] <= self.capacity:
            weight, turn = self._waiting.popleft()
            self.used += weight
            turn.set_result(None)

    @asynccontextmanager
    async def hold(self, weight: int) -> AsyncIterator[None]:
        """`take` and `give` around a block; nothing for a weight of 0 or less."""
        if weight <= 0:
            yield
            return
        taken = await self.take(weight)
        try:
            yield
        finally:
            self.give(taken)


class Behind:
    """At most one job running behind its caller, who prepares the next meanwhile (a finalize renders a
    window's chunks while the previous window's are written). `start` first waits for the job before it;
    leaving the block waits for the last one, and on a failure or cancellation cancels it and still
    waits until it has ended, so nothing started here outlives the block."""

    def __init__(self) -> None:
        self._task: asyncio.Future[None] | None = None

    async def start(self, job: Callable[[], Awaitable[None]]) -> None:
        """Wait for the job before, then start `job`; when this raises (the job before failed, or we were
        cancelled), `job` was never called."""
        await self.wait()
        self._task = asyncio.ensure_future(job())

    async def wait(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await finish_even_if_cancelled(task)

    async def __aenter__(self) -> Behind:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            await self.wait()
        elif self._task is not None:
            self._task.cancel()
            await _settle({self._task})


async def run_bounded(limit: int, jobs: Iterable[Callable[[], Awaitable[T]]]) -> list[T]:
    """Run `jobs` at most `limit` at a time, in order; their results in order.

    On the first failure (or our own cancellation) the jobs not yet started never start, the running
    ones are cancelled, and every one is awaited before the exception propagates.
    """
    return await run_weighted(limit, ((1, j) for j in jobs))


async def run_weighted(capacity: int, jobs: Iterable[tuple[int, Callable[[], Awaitable[T]]]],
                       budget: Budget | None = None, most: int | None = None) -> list[T]:
    """`run_bounded` where each job weighs some units of `capacity` (say, the objects it will hold in
    memory): jobs start in order while their weights fit (one heavier than the capacity runs alone),
    and at most `most` at once. With a shared `budget`, each job also holds its weight of it while it
    runs."""
    capacity = max(capacity, 1)
    most = max(most or capacity, 1)
    todo = list(jobs)
    if budget is not None:
        todo = [(w, _holding(budget, w, job)) for w, job in todo]
    if len(todo) <= 1:  # nothing to run beside it: no tasks, no queue (finalize does this per small stream)
        return [await job() for _, job in todo]
    results: dict[int, T] = {}
    running: dict[asyncio.Future[T], tuple[int, int]] = {}  # task -> (index, weight)
    finished: asyncio.Queue[asyncio.Future[T]] = asyncio.Queue()  # O(1) per completion, however many run
    used = 0

    async def reap() -> None:
        nonlocal used
        t = await finished.get()
        index, weight = running.pop(t)
        used -= weight
        results[index] = t.result()  # a failure raises here

    try:
        for index, (weight, job) in enumerate(todo):
            weight = min(max(weight, 1), capacity)
            while running and (used + weight > capacity or len(running) >= most):
                await reap()
            task = asyncio.ensure_future(job())
            task.add_done_callback(finished.put_nowait)
            running[task] = (index, weight)
            used += weight
        while running:
            await reap()
        return [results[i] for i in range(len(results))]
    finally:
        for t in running:
            t.cancel()
        await _settle(list(running))


def _holding(budget: Budget, weight: int, job: Callable[[], Awaitable[T]]) -> Callable[[], Awaitable[T]]:
    async def held() -> T:
        async with budget.hold(weight):
            return await job()
    return held


#: CPU work on more than about this many bytes runs in a thread, so the loop keeps serving ingest.
OFF_LOOP_BYTES = 256 * 1024

#: The threads `cpu_thread` runs in; None: the loop's default executor (where storage I/O runs too). The
#: finalize child sets its own, so CPU work runs at its lower priority and I/O at the service's.
cpu_pool: contextvars.ContextVar[Executor | None] = contextvars.ContextVar("cpu_pool", default=None)


async def cpu_thread(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` in a `cpu_pool` thread, in this context (as `asyncio.to_thread`)."""
    call = partial(contextvars.copy_context().run, fn, *args)
    return await finish_even_if_cancelled(asyncio.get_running_loop().run_in_executor(cpu_pool.get(), call))


async def cpu_work(size: int, fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)`, in a worker thread when `size` (bytes handled, roughly) is large: a big stream's
    decode, merge or encode would otherwise hold the event loop for tenths of a second. Small work
    stays on the loop (a thread hop costs more than it)."""
    if size < OFF_LOOP_BYTES:
        return fn(*args)
    return await cpu_thread(fn, *args)


async def _settle(tasks: Iterable[asyncio.Future[Any]]) -> None:
    """Wait until every task is done, even through further cancellations of our own (re-raised after)."""
    cancelled = False
    tasks = list(tasks)
    pending = {t for t in tasks if not t.done()}
    while pending:
        try:
            _, pending = await asyncio.wait(pending)
        except asyncio.CancelledError:
            cancelled = True
    for t in tasks:
        if not t.cancelled():
            t.exception()  # retrieved: no "exception was never retrieved" noise
    if cancelled:
        raise asyncio.CancelledError
