"""The finalize child's limit on a remote store's requests in flight (aggregator/storage/adaptive.py)."""

from __future__ import annotations

import asyncio
import math
import random
import time
from functools import partial
from typing import Any

import aiohttp
import pytest
from agg_helpers import StoreKit
from aiohttp import web

from aggregator.fanout import run_bounded
from aggregator.finalize.child import limited
from aggregator.storage.adaptive import IDLE_RESET_S, AdaptiveLimit, LimitedStore
from aggregator.storage.local import LocalStore


def test_a_store_that_answers_alike_keeps_the_most_requests_in_flight() -> None:
    limit = AdaptiveLimit(least=1, most=16)
    rng = random.Random(7)
    for _ in range(2000):  # 10 ms, give or take 40 % (jitter, object sizes): no queue
        limit.observe(0.010 * rng.uniform(0.6, 1.4))
    assert limit.allowed == 16


def test_latency_that_grows_with_requests_in_flight_shrinks_the_limit_and_a_calm_store_regrows_it() -> None:
    limit = AdaptiveLimit(least=1, most=16)
    for _ in range(200):  # answers alike: it climbs to the most (a window is as many requests as allowed)
        limit.observe(0.003)
    assert limit.allowed == 16
    seen = []
    for _ in range(600):  # then one queue: each request waits behind every other in flight, 3 ms each
        limit.observe(0.003 * limit.allowed)
        seen.append(limit.allowed)
    assert max(seen[-300:]) <= 4
    for _ in range(600):  # calm again: it climbs back
        limit.observe(0.003)
    assert limit.allowed == 16


async def test_an_idle_store_starts_again_from_the_least() -> None:
    limit = AdaptiveLimit(least=1, most=16)
    for _ in range(100):
        limit.observe(0.5)  # a slow store, once: the least seen is 0.5 s
    limit.idle_since = time.monotonic() - IDLE_RESET_S - 0.1
    async with limit.slot():
        assert limit.allowed == 1 and limit.base == math.inf


class OneQueue:
    """A real HTTP server that answers one request at a time (as Azurite's one process does), recording how
    many requests were waiting in it when each arrived."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.inside = 0
        self.seen: list[int] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.inside += 1
        self.seen.append(self.inside)
        try:
            async with self.lock:
                await asyncio.sleep(0.002)
            return web.Response(body=request.match_info["key"].encode())
        finally:
            self.inside -= 1


class HttpStore:
    """The smallest remote store over that server: `get` only."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session, self.base = session, base

    async def get(self, key: str) -> bytes | None:
        async with self.session.get(f"{self.base}/{key}") as resp:
            return await resp.read()

    async def put(self, key: str, data: bytes, *, overwrite: bool = True) -> bool:
        raise NotImplementedError

    async def delete(self, key: str) -> None:
        raise NotImplementedError

    async def list_keys(self, prefix: str) -> list[str]:
        raise NotImplementedError

    async def ping(self) -> None:
        pass

    async def close(self) -> None:
        pass


async def test_a_store_that_queues_soon_holds_only_a_few_of_the_finalizes_requests(aiohttp_server: Any) -> None:
    queue = OneQueue()
    app = web.Application()
    app.router.add_get("/{key}", queue.handle)
    server = await aiohttp_server(app)
    async with aiohttp.ClientSession() as session:
        store = LimitedStore(HttpStore(session, str(server.make_url("")).rstrip("/")))
        got = await run_bounded(16, (partial(store.get, f"k{i}") for i in range(400)))
    assert got == [f"k{i}".encode() for i in range(400)]
    # It learnt the store queues: at most half as many at once (an HTTP round trip adds its own time, so the
    # queue's share of each latency is smaller than in the test above)
    assert max(queue.seen[-300:]) <= 8
    assert store.limit.in_flight == 0


async def test_a_cancelled_waiter_gives_its_turn_to_the_next() -> None:
    limit = AdaptiveLimit(least=1, most=1)
    order: list[str] = []
    release = asyncio.Event()

    async def request(name: str) -> None:
        async with limit.slot():
            order.append(name)
            await release.wait()

    first = asyncio.create_task(request("first"))
    await asyncio.sleep(0)
    waiting = [asyncio.create_task(request(n)) for n in ("cancelled", "next")]
    await asyncio.sleep(0.01)
    waiting[0].cancel()
    release.set()
    await asyncio.wait_for(asyncio.gather(first, waiting[1]), 5)
    assert order == ["first", "next"] and limit.in_flight == 0


@pytest.mark.azure
async def test_the_limited_store_is_the_store_on_azurite(azurite: Any, tmp_path: Any) -> None:
    kit = StoreKit("azure", tmp_path, azurite)
    bare, store = kit.inspector(), LimitedStore(kit.open())
    try:
        await run_bounded(16, (partial(store.put, f"job/x/{i}.json", b"%d" % i) for i in range(40)))
        assert await store.put("job/x/0.json", b"again", overwrite=False) is False
        assert sorted(await store.list_keys("job/x/")) == sorted(await bare.list_keys("job/x/"))
        assert len(await store.list_keys("job/x/")) == 40
        assert await store.get("job/x/7.json") == b"7" == await bare.get("job/x/7.json")
        assert await store.read_range("job/x/12.json", 1, 5) == (b"2", 2)
        await store.delete("job/x/7.json")
        assert await bare.get("job/x/7.json") is None and await store.get("job/x/7.json") is None
        assert store.limit.in_flight == 0
    finally:
        await store.close()
        await kit.close()


def test_the_child_limits_a_remote_store_not_the_local_one(tmp_path: Any) -> None:
    local = LocalStore(tmp_path)
    assert limited(local) is local
    remote = HttpStore(None, "http://127.0.0.1:9")  # type: ignore[arg-type]
    wrapped = limited(remote)
    assert isinstance(wrapped, LimitedStore) and wrapped.inner is remote
