"""Loss and risk as metrics (issue 17): lines and bytes shippers dropped, finalize outcomes, the
ingest latency histogram, refused tokens by job (bounded), and 401/403 log lines that name the job
and pod without repeating header text."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from agg_helpers import JOB, POD, StoreKit, admin_headers, batch, dumps, events, ingest_headers, make_config
from conftest import TEST_SECRET

import aggregator.ingest
from aggregator.app import make_app
from aggregator.auth import job_token
from aggregator.metrics import MAX_REJECTED_JOB_LABELS, NO_JOB, OTHER_JOBS, Metrics

Client = Any


@pytest.fixture
async def client(aiohttp_client: Any, local_kit: StoreKit) -> AsyncIterator[Client]:
    yield await aiohttp_client(make_app(make_config(), store=local_kit.open()))


async def metrics_text(client: Client) -> str:
    return str(await (await client.get("/metrics")).text())


async def post(client: Client, body: dict[str, Any], headers: dict[str, str]) -> int:
    r = await client.post("/v1/ingest", data=dumps(body), headers=headers)
    return int(r.status)


def refusals(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [dict(r.fields) for r in caplog.records if r.getMessage() == "token refused"]  # type: ignore[attr-defined]


async def test_dropped_lines_and_bytes_are_counted_once_per_stored_batch(client: Client) -> None:
    dropped = batch(seq=0, evs=events([500]), dropped={"off": 0, "lines": 7, "bytes": 420})
    assert await post(client, dropped, ingest_headers()) == 200
    assert await post(client, dropped, ingest_headers()) == 200  # a re-send: a duplicate
    assert await post(client, batch(seq=1, evs=events([501])), ingest_headers()) == 200  # nothing dropped
    text = await metrics_text(client)
    assert "blast_logs_aggregator_dropped_lines_total 7.0" in text
    assert "blast_logs_aggregator_dropped_bytes_total 420.0" in text
    assert "blast_logs_aggregator_duplicate_batches_total 1.0" in text


async def test_ingest_latency_is_a_histogram_of_every_ingest(client: Client) -> None:
    assert await post(client, batch(evs=events([0])), ingest_headers()) == 200
    assert await post(client, batch(evs=events([0])), {"Authorization": "Bearer nope"}) == 401
    text = await metrics_text(client)
    assert "blast_logs_aggregator_ingest_duration_seconds_count 2.0" in text
    assert 'blast_logs_aggregator_ingest_duration_seconds_bucket{le="0.005"}' in text


@pytest.mark.parametrize("eof, outcome", [(True, "complete"), (False, "incomplete")])
async def test_finalize_outcome_says_whether_the_logs_are_complete(client: Client, eof: bool,
                                                                   outcome: str) -> None:
    assert await post(client, batch(evs=events([0]), eof=eof), ingest_headers()) == 200
    r = await client.post(f"/v1/jobs/{JOB}/finalize", headers=admin_headers())
    assert r.status == 200 and (await r.json())["complete"] is eof
    r = await client.post("/v1/jobs/elb-none/finalize", headers=admin_headers())
    assert r.status == 404
    text = await metrics_text(client)
    assert f'blast_logs_aggregator_finalize_duration_seconds_count{{outcome="{outcome}"}} 1.0' in text
    assert 'blast_logs_aggregator_finalize_duration_seconds_count{outcome="not_found"} 1.0' in text
    assert 'outcome="ok"' not in text


HOSTILE = 'Bearer elb-9"<script>{evil}.nomac'


async def test_refused_tokens_are_counted_by_the_job_they_name_and_logged_with_the_pod(
        client: Client, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    forged = job_token("another secret", "elb-999")
    assert await post(client, batch(job_id="elb-999"), {"Authorization": f"Bearer {forged}"}) == 401
    assert await post(client, batch(job_id="elb-555"), ingest_headers()) == 403  # JOB's token, other job
    assert await post(client, batch(), {"Authorization": "Bearer " + make_config().admin_token}) == 403
    assert await post(client, batch(pod="-not-a-pod-"), {}) == 401
    assert await post(client, batch(), {"Authorization": HOSTILE}) == 401
    r = await client.post(f"/v1/jobs/{JOB}/finalize", headers=ingest_headers())
    assert r.status == 403
    r = await client.post("/v1/ingest", data=b"not json")  # names no job at all
    assert r.status == 401
    text = await metrics_text(client)
    # Without a token that names a valid job id, the job the request names (the batch's) is the label.
    assert 'blast_logs_aggregator_rejected_tokens_total{job_id="elb-123",reason="malformed"} 1.0' in text
    for job, reason in [("elb-999", "invalid_token"), (JOB, "wrong_job"), (JOB, "admin_token"),
                        (NO_JOB, "malformed"), (JOB, "invalid_token"), (JOB, "job_token")]:
        assert f'blast_logs_aggregator_rejected_tokens_total{{job_id="{job}",reason="{reason}"}} 1.0' in text, (job, reason)
    logged = refusals(caplog)
    assert logged[0] == {"status": 401, "reason": "invalid_token", "token_job": "elb-999", "job_id": "elb-999",
                         "pod": POD}
    assert logged[1] == {"status": 403, "reason": "wrong_job", "token_job": JOB, "job_id": "elb-555", "pod": POD}
    assert logged[2]["reason"] == "admin_token" and logged[2]["pod"] == POD
    assert logged[3] == {"status": 401, "reason": "malformed", "token_job": None, "job_id": JOB}  # no valid pod
    assert logged[4]["token_job"] is None and logged[4]["pod"] == POD
    assert logged[5] == {"status": 403, "reason": "job_token", "token_job": JOB, "job_id": JOB}
    everything = caplog.text + repr([r.__dict__ for r in caplog.records])
    assert "evil" not in everything and "nomac" not in everything
    assert TEST_SECRET not in everything


def test_the_job_label_is_bounded() -> None:
    metrics = Metrics()
    labels = [metrics.job_label(f"elb-{i}") for i in range(MAX_REJECTED_JOB_LABELS + 50)]
    assert labels[:MAX_REJECTED_JOB_LABELS] == [f"elb-{i}" for i in range(MAX_REJECTED_JOB_LABELS)]
    assert set(labels[MAX_REJECTED_JOB_LABELS:]) == {OTHER_JOBS}
    assert metrics.job_label("elb-3") == "elb-3"  # a job already labelled keeps its label
    assert metrics.job_label(None) == NO_JOB


async def test_a_refused_trickling_body_neither_holds_a_slot_nor_delays_the_401(
        aiohttp_client: Any, local_kit: StoreKit, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aggregator.ingest, "REFUSAL_PEEK_SECONDS", 0.3)
    client = await aiohttp_client(make_app(make_config(max_inflight_ingests=1), store=local_kit.open()))
    url = client.make_url("/")
    reader, writer = await asyncio.open_connection(url.host, url.port)
    writer.write(b"POST /v1/ingest HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer elb-7.forged\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"job_id\": \"elb-7\"")
    await writer.drain()
    started = time.monotonic()
    status_line = await asyncio.wait_for(reader.readline(), 10)
    assert status_line.startswith(b"HTTP/1.1 401") and time.monotonic() - started < 5
    assert await post(client, batch(evs=events([0])), ingest_headers()) == 200  # the one slot was free
    writer.close()
    text = await metrics_text(client)
    assert 'blast_logs_aggregator_rejected_tokens_total{job_id="elb-7",reason="invalid_token"} 1.0' in text
