"""Structured concurrency for storage work: nothing we started outlives the call that started it.

`asyncio.gather` leaves siblings running when one fails, and cancelling a task that waits on a
thread (LocalStore) leaves the thread writing. Finalize holds a lock while it writes, so a write
that lands after the lock was released can overwrite a later finalize's chunk. These helpers make
"returned or raised" mean "every write we started has finished".
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
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


async def run_bounded(limit: int, jobs: Iterable[Callable[[], Awaitable[T]]]) -> list[T]:
    """Run `jobs` at most `limit` at a time; their results in order.

    On the first failure (or our own cancellation) the jobs not yet started never start, the running
    ones are cancelled, and every one is awaited before the exception propagates.
    """
    sem = asyncio.Semaphore(max(limit, 1))

    async def one(job: Callable[[], Awaitable[T]]) -> T:
        async with sem:
            return await job()

    tasks = [asyncio.ensure_future(one(j)) for j in jobs]
    if not tasks:
        return []
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for t in tasks:
            if t.done() and not t.cancelled() and (err := t.exception()) is not None:
                raise err
        return [t.result() for t in tasks]
    finally:
        for t in tasks:
            t.cancel()
        await _settle(set(tasks))


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
