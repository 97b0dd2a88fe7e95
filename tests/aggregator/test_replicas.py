"""Two real aggregator processes on one store: any replica ingests, either finalizes, same bytes."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pytest
from agg_helpers import POD, StoreKit, admin_headers, batch, dumps, events, ingest_headers, read_tree

from aggregator.storage.layout import lock_key, logs_prefix, steps_prefix

STREAMS = [(POD, "blast"), (POD, "results-export"), ("blastn-batch-job-8-xyz99", "blast")]


@pytest.fixture
def replicas(kit: StoreKit, start_aggregator: Any) -> tuple[Any, Any, StoreKit]:
    """Two aggregators sharing one store (both backends), and the StoreKit to inspect it."""
    a = start_aggregator(kit.url, **kit.aggregator_env())
    b = start_aggregator(kit.url, **kit.aggregator_env())
    return a, b, kit


async def post(session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    async with session.post(url, data=body, headers=headers) as r:
        return r.status, await r.read()


async def ingest_spread(session: aiohttp.ClientSession, urls: list[str], job_id: str, per_stream: int,
                        batch_size: int) -> None:
    """Each stream's batches alternate between replicas; every batch is also re-sent to the other one."""
    n = 0
    for pod, container in STREAMS:
        for seq, start in enumerate(range(0, per_stream, batch_size)):
            last = start + batch_size >= per_stream
            body = dumps(batch(job_id=job_id, pod=pod, container=container, seq=seq, eof=last,
                               exit_code=0 if last else None,
                               evs=events(range(start, min(start + batch_size, per_stream)))))
            first, second = urls[n % 2], urls[(n + 1) % 2]
            n += 1
            status, resp = await post(session, first + "/v1/ingest", body, ingest_headers(job_id))
            assert status == 200 and orjson.loads(resp)["duplicate"] is False
            status, resp = await post(session, second + "/v1/ingest", body, ingest_headers(job_id))
            assert status == 200 and orjson.loads(resp)["duplicate"] is True


async def check_complete(kit: StoreKit, job_id: str, per_stream: int) -> None:
    """Each stream's lines appear exactly once in each phase it feeds; no lock is left behind."""
    store = kit.inspector()
    assert await store.get(lock_key(job_id)) is None
    tree = await read_tree(store, logs_prefix(job_id))
    seen: dict[tuple[str, str, str], list[str]] = {}
    for _key, data in sorted(tree.items(), key=lambda kv: (kv[0].rsplit("/", 2)[1],
                                                            int(kv[0].rsplit("/", 1)[1][:-5]))):
        doc = orjson.loads(data)
        for e in doc["events"]:
            seen.setdefault((doc["phase"], e["pod"], e["container"]), []).append(e["line"])
    expected = [f"line {i}" for i in range(per_stream)]
    assert seen == {
        ("running", POD, "blast"): expected,
        ("running", POD, "results-export"): expected,
        ("exporting_results", POD, "results-export"): expected,
        ("running", "blastn-batch-job-8-xyz99", "blast"): expected,
    }


async def test_finalize_on_either_replica_gives_the_same_bytes(replicas: Any) -> None:
    a, b, kit = replicas
    job = "elb-replicas-1"
    async with aiohttp.ClientSession() as s:
        await ingest_spread(s, [a.url, b.url], job, per_stream=300, batch_size=70)
        fin = f"/v1/jobs/{job}/finalize"
        status_a, body_a = await post(s, a.url + fin, b"", admin_headers())
        tree_a = await read_tree(kit.inspector(), steps_prefix(job))
        status_b, body_b = await post(s, b.url + fin, b"", admin_headers())
        tree_b = await read_tree(kit.inspector(), steps_prefix(job))
    assert status_a == status_b == 200
    assert body_a == body_b
    assert tree_a == tree_b
    assert orjson.loads(body_a)["complete"] is True
    await check_complete(kit, job, 300)


async def test_replicas_finalizing_at_the_same_moment_agree(replicas: Any) -> None:
    a, b, kit = replicas
    job = "elb-replicas-2"
    async with aiohttp.ClientSession() as s:
        await ingest_spread(s, [a.url, b.url], job, per_stream=600, batch_size=200)
        fin = f"/v1/jobs/{job}/finalize"
        results = await asyncio.gather(*(post(s, url + fin, dumps({"wait_seconds": 5}), admin_headers())
                                         for url in (a.url, b.url, a.url, b.url)))
        tree = await read_tree(kit.inspector(), steps_prefix(job))
        # A later, quiet finalize finds nothing to change.
        again = await post(s, a.url + fin, b"", admin_headers())
        assert await read_tree(kit.inspector(), steps_prefix(job)) == tree
    bodies = {body for _status, body in results}
    assert [status for status, _ in results] == [200] * 4
    assert len(bodies) == 1 and again == (200, bodies.pop())
    await check_complete(kit, job, 600)
