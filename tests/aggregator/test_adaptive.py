"""`AdaptiveLimit` against simulated stores on a virtual clock: one that answers in the same time at any
concurrency, one that serves a request at a time, one that fails; and its waiters' order and cancels."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Awaitable, Callable

import pytest

from aggregator.adaptive import AdaptiveLimit

#: a binary fraction, so sums and means of equal round trips are exact
TICK = 1 / 64


class VirtualTime:
    """A clock that jumps to the next timer once every task is blocked."""

    def __init__(self) -> None:
        self.now = 0.0
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._timers, (self.now + seconds, next(self._order), done))
        await done

    async def run(self, main: Awaitable[object]) -> None:
        task = asyncio.ensure_future(main)
        while not task.done():
            for _ in range(20):  # every task that can run, runs
                await asyncio.sleep(0)
            if self._timers:
                self.now, _, done = heapq.heappop(self._timers)
                done.set_result(None)
        await task


class Store:
    """Requests served at once in `service` seconds each (`serial`: one at a time, the rest queue);
    notes the most requests at the store at once."""

    def __init__(self, clock: VirtualTime, service: float, serial: bool) -> None:
        self.clock = clock
        self.service = service
        self.lock = asyncio.Lock() if serial else None
        self.now = self.most = self.served = 0

    async def request(self) -> None:
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            if self.lock is None:
                await self.clock.sleep(self.service)
            else:
                async with self.lock:
                    await self.clock.sleep(self.service)
            self.served += 1
        finally:
            self.now -= 1


async def drive(limit: AdaptiveLimit, request: Callable[[], Awaitable[None]], workers: int, each: int) -> int:
    """`workers` tasks sending `each` requests one after another, every request in a slot; how many
    failed (OSError)."""
    failed = 0

    async def worker() -> None:
        nonlocal failed
        for _ in range(each):
            try:
                async with limit.slot():
                    await request()
            except OSError:
                failed += 1

    await asyncio.gather(*(worker() for _ in range(workers)))
    return failed


async def driven(*, serial: bool, each: int) -> tuple[VirtualTime, Store, AdaptiveLimit]:
    """A fresh limit of at most 16 after 16 workers sent `each` requests to a fresh store."""
    clock = VirtualTime()
    store = Store(clock, TICK, serial=serial)
    limit = AdaptiveLimit(16, clock=clock)
    await clock.run(drive(limit, store.request, 16, each))
    return clock, store, limit


async def test_a_store_as_fast_at_any_concurrency_gets_the_most() -> None:
    _, store, limit = await driven(serial=False, each=100)
    assert store.served == 1600
    assert limit.limit == 16 and limit.low == 1
    assert store.most == 16


async def test_a_store_serving_one_at_a_time_is_not_queued_up() -> None:
    """Sixteen would-be concurrent requests to a store that serves one at a time: the limit stays where
    requests barely queue, and the store serves them in the same time as a fixed limit of 16 (it cannot
    serve faster), so other clients of that store wait behind a short queue instead of sixteen."""
    clock, store, limit = await driven(serial=True, each=50)
    assert store.served == 800
    assert limit.high <= 4 and store.most <= 4
    assert clock.now == pytest.approx(800 * TICK)  # no slower than the store itself

    fixed_clock = VirtualTime()
    fixed = Store(fixed_clock, TICK, serial=True)
    await fixed_clock.run(drive(AdaptiveLimit(16, start=16, clock=fixed_clock), fixed.request, 16, 1))
    assert fixed.most == 16  # what the store saw before: the queue a fixed limit puts in front of others


async def test_failures_shrink_the_limit() -> None:
    clock, store, limit = await driven(serial=False, each=100)
    assert limit.limit == 16
    failing = True

    async def flaky() -> None:
        await store.request()
        if failing:
            raise OSError("store trouble")

    failed = [0]

    async def failing_windows() -> None:
        failed[0] = await drive(limit, flaky, 16, 4)

    await clock.run(failing_windows())
    assert failed[0] == 64 and limit.limit < 16
    shrunk = limit.limit
    failing = False
    await clock.run(drive(limit, flaky, 16, 100))
    assert limit.limit > shrunk  # and it grows again once the store answers


async def test_waiters_are_served_in_order_and_a_cancelled_one_holds_nothing() -> None:
    limit = AdaptiveLimit(4, start=1)
    order: list[int] = []
    gate = asyncio.Event()

    async def holder(n: int) -> None:
        async with limit.slot(timed=False):
            order.append(n)
            await gate.wait()

    first = asyncio.ensure_future(holder(0))
    await asyncio.sleep(0)
    waiting = [asyncio.ensure_future(holder(n)) for n in (1, 2, 3)]
    await asyncio.sleep(0)
    waiting[0].cancel()  # cancelled while it waits
    gate.set()
    await asyncio.gather(first, *waiting[1:])
    with pytest.raises(asyncio.CancelledError):
        await waiting[0]
    assert order == [0, 2, 3]
    assert limit.in_flight == 0 and limit.limit == 1  # untimed slots say nothing of the store


async def test_a_waiter_cancelled_as_it_is_granted_passes_the_slot_on() -> None:
    limit = AdaptiveLimit(1)

    async def waiter(got: list[int]) -> None:
        async with limit.slot(timed=False):
            got.append(1)

    await limit.acquire()
    got: list[int] = []
    granted, after = asyncio.ensure_future(waiter([])), asyncio.ensure_future(waiter(got))
    await asyncio.sleep(0)
    limit.release()  # the slot goes to `granted`, which is cancelled before it runs
    granted.cancel()
    with pytest.raises(asyncio.CancelledError):
        await granted
    await asyncio.wait_for(after, 1)
    assert got == [1] and limit.in_flight == 0


async def test_the_limit_never_falls_below_its_least() -> None:
    clock = VirtualTime()
    store = Store(clock, TICK, serial=False)
    limit = AdaptiveLimit(16, least=2, clock=clock)
    assert limit.limit == 2

    async def failing() -> None:
        await store.request()
        raise OSError("store trouble")

    async def run() -> None:
        assert await drive(limit, failing, 8, 20) == 160

    await clock.run(run())
    assert limit.limit == 2 and limit.low == 2
