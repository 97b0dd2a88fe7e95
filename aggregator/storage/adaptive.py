"""A remote store's requests at a concurrency that follows their latency (`AdaptiveLimit`, `LimitedStore`).

A finalize reads and writes `READ_CONCURRENCY` objects at once. Where the store answers each request in
about the same time however many are in flight (Azure Blob Storage), that is what makes a big finalize
fast. Where the store is one queue (Azurite: one Node.js process), the requests only wait there, and so
does every other job's ingest behind them (other jobs' ingest p99 3.6x idle during a 2,000-stream
finalize at 16 in flight, 1.7x at 4, the finalize 4.8 s against 5.4 s: docs/benchmarks.md). The limit
here is TCP Vegas's idea, as in Vector's adaptive request concurrency: latency near the least seen means
no queue, so the limit grows; latency well above it means requests are queueing in the store, so it
shrinks.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aggregator.storage.base import Store, read_range

#: A window's mean latency up to this many times the least window mean seen counts as no queue (jitter,
#: bigger objects); above it the limit shrinks in proportion.
TOLERANCE = 3.0
#: After this long with nothing in flight the limit starts again from `least`, and forgets the least
#: latency seen (the store may have changed; a queue that stays must not raise it).
IDLE_RESET_S = 1.0


@dataclass
class AdaptiveLimit:
    """How many requests may be in flight, between `least` and `most`. It starts at `least` and is revised
    once per window (as many finished requests as were allowed: about one round trip): one more while the
    window's mean latency stays within `TOLERANCE` of the least window mean seen since the store was last
    idle, else cut by as much as it exceeds that (at most by half). On a store that answers alike however
    many wait, it climbs to `most` in `most` windows; on one queue it settles at three or four. `slot()`
    waits for room."""

    least: int = 1
    most: int = 16
    limit: float = 0.0
    base: float = math.inf
    in_flight: int = 0
    idle_since: float = -math.inf
    _window: list[float] = field(default_factory=list)
    _waiters: deque[asyncio.Future[None]] = field(default_factory=deque)

    def __post_init__(self) -> None:
        self.least = max(1, min(self.least, self.most))
        self.limit = float(self.least)

    @property
    def allowed(self) -> int:
        return int(self.limit)

    def observe(self, seconds: float) -> None:
        """One finished request's latency."""
        self._window.append(max(seconds, 1e-6))
        if len(self._window) < self.allowed:
            return
        mean = sum(self._window) / len(self._window)
        self._window.clear()
        self.base = min(mean, self.base)
        if mean <= TOLERANCE * self.base:
            self.limit = min(float(self.most), self.limit + 1)
        else:
            self.limit = max(float(self.least), self.limit * max(0.5, TOLERANCE * self.base / mean))
        self._wake()

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one of the `allowed` places for a request; its latency is observed when it succeeds."""
        if self.in_flight == 0 and time.monotonic() - self.idle_since > IDLE_RESET_S:
            self.limit, self.base = float(self.least), math.inf
            self._window.clear()
        while self.in_flight >= self.allowed:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                elif not waiter.cancelled() and self.in_flight < self.allowed:
                    self._wake()  # woken but cancelled, or woken with room for more: pass it on
        self.in_flight += 1
        started = time.perf_counter()
        ok = False
        try:
            yield
            ok = True
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self.idle_since = time.monotonic()
            if ok:
                self.observe(time.perf_counter() - started)
            else:
                self._wake()

    def _wake(self) -> None:
        room = self.allowed - self.in_flight
        while room > 0 and self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                room -= 1


class LimitedStore:
    """`inner` (a remote store that has no many-key operations of its own), each request under one
    `AdaptiveLimit`: the finalize child's store, so its fan-outs do not flood a store that queues."""

    def __init__(self, inner: Store, limit: AdaptiveLimit | None = None) -> None:
        self.inner = inner
        self.limit = limit or AdaptiveLimit()

    async def get(self, key: str) -> bytes | None:
        async with self.limit.slot():
            return await self.inner.get(key)

    async def read_range(self, key: str, start: int, length: int) -> tuple[bytes, int] | None:
        async with self.limit.slot():
            return await read_range(self.inner, key, start, length)

    async def put(self, key: str, data: bytes, *, overwrite: bool = True) -> bool:
        async with self.limit.slot():
            return await self.inner.put(key, data, overwrite=overwrite)

    async def delete(self, key: str) -> None:
        async with self.limit.slot():
            await self.inner.delete(key)

    async def list_keys(self, prefix: str) -> list[str]:
        async with self.limit.slot():
            return await self.inner.list_keys(prefix)

    async def ping(self) -> None:
        await self.inner.ping()

    async def close(self) -> None:
        await self.inner.close()
