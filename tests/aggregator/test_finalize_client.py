"""The job API client against a real aggregator process: results, retries, and never raising."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from agg_helpers import JOB, batch, dumps, events
from conftest import ROOT, TEST_ADMIN_TOKEN, TEST_SECRET, free_port

from aggregator.client import FinalizeResult, finalize, finalize_sync, job_token
from aggregator.storage.layout import lock_key


def ingest_sync(url: str, body: dict[str, Any], job_id: str = JOB) -> None:
    import urllib.request

    req = urllib.request.Request(url + "/v1/ingest", data=dumps(body), method="POST", headers={
        "Authorization": f"Bearer {job_token(TEST_SECRET, job_id)}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200


@pytest.fixture
def aggregator(start_aggregator: Any) -> Any:
    agg = start_aggregator(BLAST_LOGS_LOCK_WAIT="0.2", BLAST_LOGS_RETRY_AFTER="1")
    ingest_sync(agg.url, batch(evs=events(range(3)), eof=True, exit_code=0))
    return agg


async def test_finalize_returns_the_summary(aggregator: Any) -> None:
    result = await finalize(aggregator.url, TEST_ADMIN_TOKEN, JOB, wait_seconds=1,
                            existing_last_output={"running": "x" * 10_000})
    assert result.ok and result.status == 200 and result.error is None and result.attempts == 1
    assert result.body is not None and result.body["job_id"] == JOB and result.body["complete"] is True
    assert result.body["steps"]["running"]["last_output"] == "x" * 10_000


async def test_client_errors_are_values_not_retried(aggregator: Any) -> None:
    missing = await finalize(aggregator.url, TEST_ADMIN_TOKEN, "no-such-job")
    assert (missing.ok, missing.status, missing.attempts) == (False, 404, 1)
    assert missing.error is not None and "not_found" in missing.error
    denied = await finalize(aggregator.url, "wrong", JOB)
    assert (denied.ok, denied.status) == (False, 401)
    bad = await finalize(aggregator.url, TEST_ADMIN_TOKEN, "bad/id")
    assert not bad.ok and bad.status in (400, 404)


async def test_unreachable_aggregator_gives_an_error_after_retries() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = await finalize(url, TEST_ADMIN_TOKEN, JOB, timeout=5, attempts=3)
    assert not result.ok and result.status is None and result.attempts == 3
    assert result.error and "Connect" in result.error
    nonsense = await finalize("not a url at all", TEST_ADMIN_TOKEN, JOB, timeout=2)
    assert isinstance(nonsense, FinalizeResult) and not nonsense.ok and nonsense.attempts == 1
    assert nonsense.error and "URL" in nonsense.error


async def test_503_is_retried_honouring_retry_after(aggregator: Any, tmp_path: Path) -> None:
    lock = tmp_path / "store" / lock_key(JOB)
    lock.write_bytes(orjson.dumps({"owner": "other-replica", "expires": time.time() + 600}))
    busy = await finalize(aggregator.url, TEST_ADMIN_TOKEN, JOB, attempts=2, timeout=20)
    assert (busy.ok, busy.status, busy.attempts) == (False, 503, 2)
    assert busy.error is not None and "busy" in busy.error
    # The other replica finishes while we wait out Retry-After: the retry succeeds.
    threading.Timer(0.5, lock.unlink).start()
    result = await finalize(aggregator.url, TEST_ADMIN_TOKEN, JOB, attempts=4, timeout=20)
    assert result.ok and result.attempts >= 2


def test_finalize_sync_outside_and_inside_an_event_loop(aggregator: Any) -> None:
    result = finalize_sync(aggregator.url, TEST_ADMIN_TOKEN, JOB)
    assert result.ok and result.body is not None

    async def inside() -> FinalizeResult:
        return finalize_sync(aggregator.url, TEST_ADMIN_TOKEN, JOB)

    again = asyncio.run(inside())
    assert again.ok and again.body == result.body


def test_job_token_matches_the_cli() -> None:
    env = {"BLAST_LOGS_SECRET": TEST_SECRET, "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "aggregator.cli", "token", "elb-42"], env=env,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0
    assert out.stdout.strip() == job_token(TEST_SECRET, "elb-42")
    assert out.stdout.startswith("elb-42.") and "=" not in out.stdout
