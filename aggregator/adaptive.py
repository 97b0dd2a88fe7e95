"""`AdaptiveLimit`: how many storage requests a finalize has in flight, adapted to the store's latency.

A fixed limit is wrong one way or the other: a real Azure account serves sixteen reads at once as fast as
one, while a store that serves requests one at a time (Azurite here; an account being throttled; a busy
disk) only queues them, and every other job's ingest on that store waits behind the queue. So the limit
follows the round-trip times, as Vector's adaptive request concurrency does (additive increase,
multiplicative decrease): it starts low; once per window (the mean round trip), if the window used every
slot and its mean round trip was no worse than the running mean, it grows by one; if the mean round trip
rose past the running mean by `DEVIATION_SCALE` standard deviations, or a request failed, it shrinks to
`DECREASE` of itself. A store that answers in the same time at any concurrency runs at `most`; one whose
answers slow down as requests queue settles where they barely queue. (Unlike Vector's, a window whose
mean equals the running mean exactly is no reason to shrink: a store that always answers in the same
time would otherwise lose slots whenever the window did not use them all.)
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Final

#: Vector's defaults (`adaptive_concurrency`), chosen there by simulation against services of many kinds.
DECREASE: Final = 0.9
EWMA_ALPHA: Final = 0.4
DEVIATION_SCALE: Final = 2.5


class AdaptiveLimit:
    """At most `limit` slots held at once; `limit` moves between `least` and `most` with the slots' hold
    times.

    `async with limit.slot():` holds one for a request and times it; `slot(timed=False)` for a call whose
    time says nothing about the store's latency (one that writes a thousand files). Waiters are served
    in order. Not thread-safe: one event loop.
    """

    def __init__(self, most: int, *, least: int = 1, start: int = 1,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if most < 1:
            raise ValueError("most must be at least 1")
        self.most = most
        self.least = max(1, min(least, most))
        self.limit = max(self.least, min(start, most))
        self.in_flight = 0
        #: the lowest and highest limit reached (for the finalize's log)
        self.low = self.high = self.limit
        self._clock = clock
        self._waiters: deque[asyncio.Future[None]] = deque()
        # the window: its end, its round trips' sum and count, whether every slot was used, a failure
        self._next_update = 0.0
        self._sum = 0.0
        self._count = 0
        self._reached = False
        self._failed = False
        # the running mean and variance of the windows' mean round trips (None before the first)
        self._mean: float | None = None
        self._variance = 0.0

    def slot(self, *, timed: bool = True) -> Slot:
        return Slot(self, timed)

    async def acquire(self) -> None:
        if self.in_flight < self.limit and not self._waiters:
            self._take()
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # granted as we were cancelled: give it back
                self.in_flight -= 1
                self._wake()
            else:
                self._waiters.remove(waiter)
            raise

    def _take(self) -> None:
        self.in_flight += 1
        if self.in_flight >= self.limit:
            self._reached = True

    def release(self, rtt: float | None = None, *, failed: bool = False) -> None:
        """Give a slot back, with its round trip in seconds (None: not a sample) or a failure."""
        self.in_flight -= 1
        self._observe(rtt, failed)
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.in_flight < self.limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._take()
                waiter.set_result(None)

    def _observe(self, rtt: float | None, failed: bool) -> None:
        self._failed |= failed
        if rtt is not None:
            self._sum += rtt
            self._count += 1
        current = self._sum / self._count if self._count else None
        now = self._clock()
        if self._mean is None:
            if current is not None:
                self._mean = current
                self._next_update = now + current
            return
        if now < self._next_update:
            return
        self._adjust(self._mean, current)
        if current is not None:
            diff = current - self._mean
            step = EWMA_ALPHA * diff
            self._mean += step
            self._variance = (1.0 - EWMA_ALPHA) * (self._variance + diff * step)
        self._next_update = now + self._mean
        self._sum, self._count, self._reached, self._failed = 0.0, 0, False, False

    def _adjust(self, mean: float, current: float | None) -> None:
        if (self.limit < self.most and self._reached and not self._failed
                and current is not None and current <= mean):
            self.limit += 1
            self.high = max(self.high, self.limit)
        elif self.limit > self.least and (
                self._failed or (current or 0.0) > mean + DEVIATION_SCALE * math.sqrt(self._variance)):
            self.limit = max(self.least, int(self.limit * DECREASE))
            self.low = min(self.low, self.limit)


class Slot:
    """One slot of an `AdaptiveLimit`, held for the body of an `async with`."""

    __slots__ = ("_limit", "_start", "_timed")

    def __init__(self, limit: AdaptiveLimit, timed: bool) -> None:
        self._limit = limit
        self._timed = timed
        self._start = 0.0

    async def __aenter__(self) -> None:
        await self._limit.acquire()
        self._start = self._limit._clock()

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if kind is None:
            self._limit.release(self._limit._clock() - self._start if self._timed else None)
        else:  # a cancel says nothing of the store; a failure is back-pressure
            self._limit.release(failed=not issubclass(kind, asyncio.CancelledError))


def untimed_slot(gate: AdaptiveLimit | None) -> AbstractAsyncContextManager[None]:
    """A slot of `gate` held untimed (one call doing many requests' work), or nothing without a gate."""
    return gate.slot(timed=False) if gate is not None else contextlib.nullcontext()
