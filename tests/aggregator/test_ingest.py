"""POST /v1/ingest against make_app on a real store (a local folder, and Azurite when marked `azure`)."""

from __future__ import annotations

import asyncio
import gzip
import os
import zlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from agg_helpers import JOB, POD, admin_headers, batch, dumps, events, ingest_headers, make_config, on_request
from conftest import TEST_SECRET

from aggregator.app import make_app
from aggregator.auth import job_token
from aggregator.staging import decode_batch
from aggregator.storage import LocalStore
from aggregator.storage.layout import staging_prefix
from blastlogs.protocol import MAX_LINE_CHARS


async def staged(store: Any, job_id: str = JOB) -> list[str]:
    return [k for k in await store.list_keys(staging_prefix(job_id)) if "/b-" in k]


async def test_batch_is_stored_once_and_a_resend_is_a_duplicate(serve: Any, kit: Any) -> None:
    client = await serve()
    body = batch(evs=events(range(0, 50, 10)), seq=3)
    r1 = await client.post("/v1/ingest", data=dumps(body), headers=ingest_headers())
    assert r1.status == 200
    assert await r1.json() == {"accepted": 5, "duplicate": False}
    # A re-send may carry a new seq and new ts: still the same batch.
    body2 = dict(body, seq=4, events=[dict(e, ts=e["ts"] + 5) for e in body["events"]])
    r2 = await client.post("/v1/ingest", data=dumps(body2), headers=ingest_headers())
    assert r2.status == 200
    assert await r2.json() == {"accepted": 5, "duplicate": True}
    store = kit.inspector()
    keys = await staged(store)
    assert len(keys) == 1
    stored = decode_batch(await store.get(keys[0]))
    assert stored.seq == 3 and [e[0] for e in stored.events] == [0, 10, 20, 30, 40]


async def test_eof_batch_is_named_eof_and_an_empty_first_batch_is_accepted(serve: Any, kit: Any) -> None:
    client = await serve()
    r = await client.post("/v1/ingest", data=dumps(batch()), headers=ingest_headers())
    assert (r.status, await r.json()) == (200, {"accepted": 0, "duplicate": False})
    r = await client.post("/v1/ingest", data=dumps(batch(seq=1, eof=True, exit_code=3)), headers=ingest_headers())
    assert r.status == 200
    keys = await staged(kit.inspector())
    assert sum(k.endswith(".eof.json") for k in keys) == 1 and len(keys) == 2


async def test_gzip_body_is_inflated(serve: Any) -> None:
    client = await serve()
    body = gzip.compress(dumps(batch(evs=events(range(3)))))
    r = await client.post("/v1/ingest", data=body, headers=ingest_headers(**{"Content-Encoding": "gzip"}))
    assert (r.status, await r.json()) == (200, {"accepted": 3, "duplicate": False})


async def test_unknown_fields_are_ignored_and_long_lines_capped(serve: Any, kit: Any) -> None:
    client = await serve()
    long_line = "x" * (MAX_LINE_CHARS + 500)
    body = batch(evs=[{"off": 0, "ts": 1.0, "line": long_line, "future": 1}], shiny_new_field={"a": 1})
    r = await client.post("/v1/ingest", data=dumps(body), headers=ingest_headers())
    assert r.status == 200
    store = kit.inspector()
    (key,) = await staged(store)
    line = decode_batch(await store.get(key)).events[0][2]
    assert len(line) == MAX_LINE_CHARS and line.endswith("chars cut]")


@pytest.mark.parametrize("headers,status", [
    ({}, 401),
    ({"Authorization": "Basic abc"}, 401),
    ({"Authorization": "Bearer"}, 401),
    ({"Authorization": "Bearer no-dot-here"}, 401),
    ({"Authorization": f"Bearer {JOB}.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}, 401),
    ({"Authorization": f"Bearer {job_token('another-secret', JOB)}"}, 401),
    ({"Authorization": f"Bearer {job_token(TEST_SECRET, 'other-job')}"}, 403),
    (admin_headers(), 403),
])
async def test_ingest_tokens(serve: Any, kit: Any, headers: dict[str, str], status: int) -> None:
    client = await serve()
    r = await client.post("/v1/ingest", data=dumps(batch(evs=events([0]))), headers=headers)
    assert r.status == status
    doc = await r.json()
    assert doc["error"] in ("unauthorized", "forbidden") and doc["detail"]
    assert await staged(kit.inspector()) == []


def _bad_bodies() -> list[Any]:
    ok = batch(evs=events([0, 1]))
    many = batch(evs=events(range(1001)))

    def with_(**kw: Any) -> bytes:
        return dumps({**ok, **kw})

    def with_event(**kw: Any) -> bytes:
        return dumps({**ok, "events": [{**ok["events"][0], **kw}]})

    return [
        pytest.param(b"{not json", id="bad-json"),
        pytest.param(b"", id="empty"),
        pytest.param(b"[1, 2]", id="not-object"),
        pytest.param(b'{"job_id": "\xff\xfe"}', id="non-utf8"),
        pytest.param(dumps(ok).replace(b"line 0", b"line \xc3\x28"), id="non-utf8-line"),
        pytest.param(with_(job_id="-leading-dash"), id="bad-job-id"),
        pytest.param(with_(job_id=123), id="job-id-int"),
        pytest.param(with_(pod="Upper"), id="bad-pod"),
        pytest.param(with_(pod="a" * 254), id="pod-too-long"),
        pytest.param(with_(container="under_score"), id="bad-container"),
        pytest.param(with_(phase="Running"), id="bad-phase"),
        pytest.param(with_(phase=None), id="no-phase"),
        pytest.param(with_(seq=True), id="bool-seq"),
        pytest.param(with_(seq=-1), id="negative-seq"),
        pytest.param(with_(seq=1.5), id="float-seq"),
        pytest.param(with_(seq="1"), id="string-seq"),
        pytest.param(with_(eof="yes"), id="string-eof"),
        pytest.param(with_(exit_code=True), id="bool-exit-code"),
        pytest.param(with_(exit_code="0"), id="string-exit-code"),
        pytest.param(with_(events={"off": 0}), id="events-not-list"),
        pytest.param(with_(events=["line"]), id="event-not-object"),
        pytest.param(with_event(off=-1), id="negative-off"),
        pytest.param(with_event(off=False), id="bool-off"),
        pytest.param(with_event(off=None), id="missing-off"),
        pytest.param(with_event(ts="now"), id="string-ts"),
        pytest.param(with_event(ts=True), id="bool-ts"),
        pytest.param(dumps(ok).replace(b'"ts":1000.0', b'"ts":1e999'), id="infinite-ts"),
        pytest.param(with_event(line=None), id="null-line"),
        pytest.param(with_event(line=["a"]), id="list-line"),
        pytest.param(with_(dropped={"off": 0, "lines": -1, "bytes": 0}), id="negative-dropped"),
        pytest.param(with_(dropped={"lines": 2, "bytes": 10}), id="dropped-without-off"),
        pytest.param(with_(dropped=[0, 1, 2]), id="dropped-not-object"),
        pytest.param(dumps(many), id="too-many-events"),
    ]


@pytest.mark.parametrize("body", _bad_bodies())
async def test_malformed_bodies_are_400(serve: Any, body: bytes) -> None:
    client = await serve()
    r = await client.post("/v1/ingest", data=body, headers=ingest_headers())
    assert r.status == 400, await r.text()
    doc = await r.json()
    assert doc["error"] == "bad_request" and isinstance(doc["detail"], str)


async def test_oversized_bodies_are_413(serve: Any, kit: Any) -> None:
    client = await serve(max_body_bytes=64 * 1024)
    big = dumps(batch(evs=[{"off": i, "ts": 1.0, "line": "y" * 3000} for i in range(30)]))
    assert len(big) > 64 * 1024
    r = await client.post("/v1/ingest", data=big, headers=ingest_headers())
    assert r.status == 413 and (await r.json())["error"] == "too_large"

    async def chunked() -> AsyncIterator[bytes]:
        for i in range(0, len(big), 8192):
            yield big[i:i + 8192]

    # No Content-Length: the cap holds while streaming.
    r = await client.post("/v1/ingest", data=chunked(), headers=ingest_headers())
    assert r.status == 413
    assert await staged(kit.inspector()) == []


async def test_gzip_bomb_is_413_and_bad_gzip_400(serve: Any) -> None:
    client = await serve()
    inner = dumps(batch(evs=[{"off": 0, "ts": 1.0, "line": "z" * 20}]))
    bomb = gzip.compress(inner[:-2] + b" " * (8 * 1024 * 1024) + inner[-2:], compresslevel=9)
    assert len(bomb) < 100 * 1024
    gz = {"Content-Encoding": "gzip"}
    r = await client.post("/v1/ingest", data=bomb, headers=ingest_headers(**gz))
    assert r.status == 413
    r = await client.post("/v1/ingest", data=b"\x1f\x8b not gzip at all", headers=ingest_headers(**gz))
    assert r.status == 400
    truncated = gzip.compress(inner)[:-10]
    r = await client.post("/v1/ingest", data=truncated, headers=ingest_headers(**gz))
    assert r.status == 400
    r = await client.post("/v1/ingest", data=zlib.compress(inner), headers=ingest_headers(**{"Content-Encoding": "br"}))
    assert r.status == 400 and (await r.json())["error"] == "unsupported_encoding"


async def test_many_ingests_in_flight_get_429(serve: Any) -> None:
    handling = asyncio.Event()
    client = await serve(max_inflight_ingests=1, retry_after=3,
                         app_hook=lambda app: on_request(app, "/v1/ingest", handling))
    release = asyncio.Event()
    body = dumps(batch(evs=events([0])))

    async def slow() -> AsyncIterator[bytes]:
        yield body[:10]
        await release.wait()
        yield body[10:]

    first = asyncio.ensure_future(client.post("/v1/ingest", data=slow(), headers=ingest_headers()))
    await asyncio.wait_for(handling.wait(), 10)  # the first request is being handled
    metrics_text = await (await client.get("/metrics")).text()
    assert "blast_logs_aggregator_ingests_in_flight 1.0" in metrics_text
    r = await client.post("/v1/ingest", data=dumps(batch(evs=events([5]))), headers=ingest_headers())
    assert r.status == 429 and r.headers["Retry-After"] == "3"
    release.set()
    assert (await first).status == 200


async def test_store_outage_is_503_with_retry_after_and_recovers(aiohttp_client: Any, local_kit: Any) -> None:
    client = await aiohttp_client(make_app(make_config(retry_after=4), store=local_kit.open()))
    root = local_kit.root
    root.parent.mkdir(parents=True, exist_ok=True)
    root.write_text("not a folder")  # every write under it fails, even for root
    body = dumps(batch(evs=events([0, 1])))
    r = await client.post("/v1/ingest", data=body, headers=ingest_headers())
    assert r.status == 503 and r.headers["Retry-After"] == "4"
    assert (await r.json())["error"] == "storage_unavailable"
    assert (await client.get("/readyz")).status == 503
    os.unlink(root)
    r = await client.post("/v1/ingest", data=body, headers=ingest_headers())
    assert (r.status, await r.json()) == (200, {"accepted": 2, "duplicate": False})
    assert (await client.get("/readyz")).status == 200
    text = await (await client.get("/metrics")).text()
    assert 'blast_logs_aggregator_storage_errors_total{operation="ingest"} 1.0' in text


@pytest.mark.azure
async def test_azure_outage_is_503_and_recovers(aiohttp_client: Any, azurite: Any, tmp_path: Any) -> None:
    from agg_helpers import StoreKit

    k = StoreKit("azure", tmp_path, azurite)
    client = await aiohttp_client(make_app(make_config(retry_after=2), store=k.open()))
    body = dumps(batch(evs=events([0])))
    assert (await client.post("/v1/ingest", data=body, headers=ingest_headers())).status == 200
    azurite.stop()
    try:
        r = await client.post("/v1/ingest", data=dumps(batch(evs=events([1]))), headers=ingest_headers())
        assert r.status == 503 and r.headers["Retry-After"] == "2"
        r = await client.post(f"/v1/jobs/{JOB}/finalize", headers=admin_headers())
        assert r.status == 503 and r.headers["Retry-After"] == "2"
        assert (await client.get("/readyz")).status == 503
    finally:
        azurite.start()
    r = await client.post("/v1/ingest", data=dumps(batch(evs=events([1]))), headers=ingest_headers())
    assert r.status == 200
    assert (await client.get("/readyz")).status == 200


class ExplodingStore(LocalStore):
    """A backend with a bug: raises something that is not a StoreError."""

    async def put(self, key: str, data: bytes, *, overwrite: bool = True) -> bool:
        raise RuntimeError("internal detail /secret/path")


async def test_unexpected_error_is_json_500_without_internals(aiohttp_client: Any, tmp_path: Any) -> None:
    client = await aiohttp_client(make_app(make_config(), store=ExplodingStore(tmp_path)))
    r = await client.post("/v1/ingest", data=dumps(batch(evs=events([0]))), headers=ingest_headers())
    assert r.status == 500
    text = await r.text()
    assert orjson.loads(text) == {"error": "internal", "detail": "internal error"}
    assert "secret" not in text


async def test_probes_and_metrics(serve: Any) -> None:
    client = await serve()
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 200
    body = dumps(batch(evs=events(range(4))))
    for _ in range(2):
        await client.post("/v1/ingest", data=body, headers=ingest_headers())
    await client.post("/v1/ingest", data=b"{", headers=ingest_headers())
    r = await client.get("/metrics")
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
    text = await r.text()
    for needle in [
        'blast_logs_aggregator_requests_total{route="/v1/ingest",status="200"} 2.0',
        'blast_logs_aggregator_requests_total{route="/v1/ingest",status="400"} 1.0',
        "blast_logs_aggregator_batches_total 2.0",
        "blast_logs_aggregator_events_total 8.0",
        "blast_logs_aggregator_duplicate_batches_total 1.0",
        "blast_logs_aggregator_ingest_bytes_total",
        "blast_logs_aggregator_finalize_duration_seconds",
        "blast_logs_aggregator_ingests_in_flight 0.0",
    ]:
        assert needle in text, needle


async def test_unknown_routes_and_methods_answer_json(serve: Any) -> None:
    client = await serve()
    r = await client.get("/v1/ingest")
    assert r.status == 405 and (await r.json())["error"] == "method_not_allowed"
    r = await client.get("/nothing/here")
    assert r.status == 404 and (await r.json())["error"] == "not_found"


def test_pod_name_is_a_kubernetes_name() -> None:
    # The helpers' pod must itself be valid, or every test above would test the wrong thing.
    from blastlogs.protocol import valid_k8s_name

    assert valid_k8s_name(POD)


async def test_serving_raises_the_young_gc_threshold(aiohttp_client: Any, local_kit: Any) -> None:
    """One batch keeps thousands of objects alive; Python's default threshold (700) collected per batch."""
    import gc

    from aggregator.app import GC_GEN0_THRESHOLD

    before = gc.get_threshold()
    gc.set_threshold(700, before[1], before[2])
    try:
        await aiohttp_client(make_app(make_config(), store=local_kit.open()))
        assert gc.get_threshold() == (GC_GEN0_THRESHOLD, before[1], before[2])
    finally:
        gc.set_threshold(*before)
