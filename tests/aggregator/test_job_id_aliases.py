"""Job ids storage could alias are refused with 400 by the real aggregator process (issue 18)."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
from conftest import ROOT, TEST_ADMIN_TOKEN, TEST_SECRET

from aggregator.auth import job_token
from blastlogs.protocol import FINALIZE_PATH, INGEST_PATH


def post(url: str, token: str, body: bytes) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, orjson.loads(answer.read())
    except urllib.error.HTTPError as e:
        return e.code, orjson.loads(e.read())


def batch(job_id: str) -> bytes:
    return orjson.dumps({"job_id": job_id, "pod": "p-1", "container": "blast", "phase": "running", "seq": 0,
                         "events": [{"off": 0, "ts": 1.0, "line": "hello"}]})


def test_a_job_id_ending_with_a_dot_is_400_and_stores_nothing(start_aggregator: Any, tmp_path: Path) -> None:
    agg = start_aggregator()
    for job in ("elb-1.", "elb-1..", "x" * 127 + "."):
        status, answer = post(agg.url + INGEST_PATH, job_token(TEST_SECRET, job), batch(job))
        assert (status, answer["error"]) == (400, "bad_request"), answer
        assert "not end with '.'" in answer["detail"]
        status, answer = post(agg.url + FINALIZE_PATH.format(job_id=job), TEST_ADMIN_TOKEN, b"{}")
        assert (status, answer["error"]) == (400, "bad_request"), answer
    assert post(agg.url + INGEST_PATH, job_token(TEST_SECRET, "elb-1"), batch("elb-1"))[0] == 200
    assert post(agg.url + FINALIZE_PATH.format(job_id="elb-1"), TEST_ADMIN_TOKEN, b"{}")[0] == 200
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["elb-1"]
    token = subprocess.run([sys.executable, "-m", "aggregator.cli", "token", "elb-1."], capture_output=True,
                           env={"PYTHONPATH": str(ROOT), "BLAST_LOGS_SECRET": TEST_SECRET}, check=False)
    assert token.returncode == 2 and b"not end with" in token.stderr
