"""No secret reaches either program's logs or metrics: the real `blast-log-shipper run` against the
real aggregator on a real Azurite, through credential failures and a storage outage.

Named in docs/security.md next to the threat it answers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest
from agg_helpers import batch, events
from conftest import Azurite, azurite_binary, free_port
from paths import ROOT

from aggregator.auth import job_token
from blastlogs.protocol import FINALIZE_PATH, INGEST_PATH

AGG_SECRET = "hmac-key-Zq8vR2xW9tLm4nB7"
AGG_ADMIN = "admin-tok-Kd93jf02LqpZ71xx"
SEC_JOB = "elb-secrets-1"
SEC_POD = "blastn-batch-secrets-abc12"


def _get(url: str, headers: dict[str, str] | None = None, data: bytes | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _shipper(volume: Path, url: str, token: str, metrics_port: int, log_path: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BLAST_LOGS_DIR": str(volume), "BLAST_LOGS_AGGREGATOR_URL": url,
           "BLAST_LOGS_TOKEN": token, "BLAST_LOGS_JOB_ID": SEC_JOB, "BLAST_LOGS_POD": SEC_POD,
           "BLAST_LOGS_NAMESPACE": "default", "BLAST_LOGS_PHASE": "running",
           "BLAST_LOGS_METRICS_PORT": str(metrics_port), "BLAST_LOGS_POLL_INTERVAL": "0.05",
           "BLAST_LOGS_LINGER": "0.05", "BLAST_LOGS_BACKOFF_BASE": "0.05", "BLAST_LOGS_BACKOFF_MAX": "0.3",
           "BLAST_LOGS_REJECT_BACKOFF": "0.3", "BLAST_LOGS_GRACE": "10", "BLAST_LOGS_LOG_LEVEL": "DEBUG"}
    with open(log_path, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "shipper", "run"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _wait(check: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return str(r.read().decode())
    except OSError:
        return ""


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.azure
@pytest.mark.slow
def test_no_secret_reaches_either_programs_logs_or_metrics(start_aggregator: Any, tmp_path: Path) -> None:
    binary = azurite_binary()
    if binary is None:
        pytest.skip("azurite-blob not installed")
    az = Azurite(binary=binary, port=free_port())  # our own, so stopping it disturbs no other test
    az.start()
    shippers: list[subprocess.Popen[bytes]] = []
    try:
        conn = az.connection_string
        account_key = conn.split("AccountKey=")[1].split(";")[0]
        agg = start_aggregator(f"azure://sec{os.getpid()}", BLAST_LOGS_AZURE_CONNECTION_STRING=conn,
                               BLAST_LOGS_SECRET=AGG_SECRET, BLAST_LOGS_ADMIN_TOKEN=AGG_ADMIN,
                               BLAST_LOGS_LOG_LEVEL="DEBUG", BLAST_LOGS_RETRY_AFTER="1")
        token = job_token(AGG_SECRET, SEC_JOB)
        wrong_token = f"{SEC_JOB}.{'Q' * 43}"
        other_job_token = job_token(AGG_SECRET, "elb-someone-else")
        secrets = {"secret": AGG_SECRET, "admin token": AGG_ADMIN, "job token": token,
                   "job token MAC": token.rsplit(".", 1)[1], "wrong token": wrong_token,
                   "other job's token": other_job_token, "connection string": conn, "account key": account_key,
                   "account key prefix": account_key[:16]}
        agg_metrics: list[str] = []
        shipper_metrics: list[str] = []

        # The aggregator, directly: every kind of credential failure, then a storage outage.
        body = orjson.dumps(batch(job_id=SEC_JOB, pod="direct-pod", evs=events([0])))
        for auth in (f"Bearer {token}", f"Bearer {wrong_token}", f"Bearer {AGG_ADMIN}", f"Bearer {other_job_token}",
                     f"Basic {AGG_SECRET}", f"Bearer {token}x", AGG_ADMIN):
            _get(agg.url + INGEST_PATH, {"Authorization": auth, "Content-Type": "application/json"}, body)
        for auth in (f"Bearer {token}", f"Bearer {AGG_ADMIN[:-1]}", f"Bearer {AGG_SECRET}"):
            _get(agg.url + FINALIZE_PATH.format(job_id=SEC_JOB), {"Authorization": auth}, b"{}")

        volume = tmp_path / "vol"
        (volume / "logs").mkdir(parents=True)
        log_file = volume / "logs" / "blast.log"
        log_file.write_text("starting blastn\n")
        shipper_log = tmp_path / "shipper.log"

        # A shipper with a wrong token: rejected (401), keeps its data, logs the failure.
        port_a = free_port()
        bad = _shipper(volume, agg.url, wrong_token, port_a, shipper_log)
        shippers.append(bad)
        _wait(lambda: b"401" in shipper_log.read_bytes() or "401" in _scrape(port_a), "a 401 seen by the shipper")
        shipper_metrics.append(_scrape(port_a))
        _stop(bad, signal.SIGKILL)
        for state in (volume / "state").glob("*"):  # let the good shipper start afresh
            state.unlink()

        # The real shipper with the right token, through a storage outage.
        port_b = free_port()
        good = _shipper(volume, agg.url, token, port_b, shipper_log)
        shippers.append(good)
        _wait(lambda: staged_count(agg.url) > 0, "the first batch stored")
        az.stop()
        with log_file.open("a") as f:
            f.write("Warning: [blastn] during the outage\n")
        _wait(lambda: _get(agg.url + "/readyz")[0] == 503, "readyz to notice the outage")
        _wait(lambda: 'reason="503"' in _scrape(port_b), "the shipper to meet a 503 and retry")
        agg_metrics.append(_get(agg.url + "/metrics")[1].decode())
        shipper_metrics.append(_scrape(port_b))
        _get(agg.url + FINALIZE_PATH.format(job_id=SEC_JOB), {"Authorization": f"Bearer {AGG_ADMIN}"}, b"{}")
        az.start()
        with log_file.open("a") as f:
            f.write("run end 7 0\n")
        (volume / "logs" / "blast.exit").write_text("0\n")
        _wait(lambda: _get(agg.url + "/readyz")[0] == 200, "readyz after the outage")
        shipper_metrics.append(_scrape(port_b))
        _stop(good)
        status, summary = _get(agg.url + FINALIZE_PATH.format(job_id=SEC_JOB),
                               {"Authorization": f"Bearer {AGG_ADMIN}"}, orjson.dumps({"wait_seconds": 5}))
        assert status == 200, summary
        assert "during the outage" in orjson.loads(summary)["steps"]["running"]["last_output"]
        agg_metrics.append(_get(agg.url + "/metrics")[1].decode())
        agg.stop()
        captured = {
            "aggregator log": agg.log_path.read_text(errors="replace"),
            "shipper log": shipper_log.read_text(errors="replace"),
            "aggregator metrics": "\n".join(agg_metrics),
            "shipper metrics": "\n".join(shipper_metrics),
        }
        assert "401" in captured["shipper log"] or "401" in captured["shipper metrics"]
        assert "storage" in captured["aggregator log"]  # the outage was logged ...
        leaks = [(what, where) for where, text in captured.items() for what, value in secrets.items() if value in text]
        assert not leaks, f"secrets found: {leaks}"  # ... but no secret with it
        for where in ("aggregator metrics", "shipper metrics"):
            assert captured[where].strip(), f"{where} were not captured"
    finally:
        for p in shippers:
            _stop(p, signal.SIGKILL)
        az.stop()


def staged_count(url: str) -> int:
    """Accepted batches according to the aggregator's own metrics."""
    _status, text = _get(url + "/metrics")
    for line in text.decode().splitlines():
        if line.startswith("blast_logs_aggregator_batches_total "):
            return int(float(line.split()[1]))
    return 0
