"""`blast-log-aggregator` as a process: refusing bad configuration, draining on SIGTERM, JSON logs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, TEST_ADMIN_TOKEN, TEST_SECRET, aggregator_env

from aggregator.config import AggregatorConfig, load_phase_table
from aggregator.errors import ConfigError


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aggregator.cli", *args], env=env, capture_output=True,
                          text=True, timeout=30)


@pytest.mark.parametrize("drop,override,needle", [
    ("BLAST_LOGS_SECRET", {}, "BLAST_LOGS_SECRET"),
    ("BLAST_LOGS_ADMIN_TOKEN", {}, "BLAST_LOGS_ADMIN_TOKEN"),
    (None, {"BLAST_LOGS_MAX_EVENTS": "many"}, "BLAST_LOGS_MAX_EVENTS"),
    (None, {"BLAST_LOGS_STORE": "s3://bucket"}, "unsupported store"),
    (None, {"BLAST_LOGS_PHASE_TABLE": "/nonexistent/table.json"}, "BLAST_LOGS_PHASE_TABLE"),
])
def test_serve_refuses_bad_configuration(tmp_path: Path, drop: str | None, override: dict[str, str],
                                         needle: str) -> None:
    env = aggregator_env(f"file://{tmp_path}/store", override)
    if drop:
        env.pop(drop)
    out = run_cli(env, "serve", "--host", "127.0.0.1", "--port", "1")
    assert out.returncode == 2
    assert needle in out.stderr
    assert TEST_SECRET not in out.stderr and TEST_ADMIN_TOKEN not in out.stderr


def test_token_needs_a_secret_and_a_valid_job_id() -> None:
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    assert run_cli(env, "token", "elb-1").returncode == 2
    env["BLAST_LOGS_SECRET"] = TEST_SECRET
    assert run_cli(env, "token", "not a job id").returncode == 2


def test_sigterm_drains_then_exits_cleanly(start_aggregator: Any) -> None:
    agg = start_aggregator(BLAST_LOGS_DRAIN_SECONDS="1.5")
    with urllib.request.urlopen(agg.url + "/readyz", timeout=5) as r:
        assert r.status == 200
    agg.proc.send_signal(signal.SIGTERM)
    status = None
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline and status is None:
        try:
            urllib.request.urlopen(agg.url + "/readyz", timeout=2)
        except urllib.error.HTTPError as e:
            status = e.code
            assert e.headers["Retry-After"]
        except OSError:
            break
        time.sleep(0.05)
    assert status == 503
    assert agg.proc.wait(timeout=30) == 0
    lines = [json.loads(line) for line in agg.log_path.read_text().splitlines() if line.startswith("{")]
    assert {"listening", "draining", "stopped"} <= {line["msg"] for line in lines}
    text = agg.log_path.read_text()
    assert TEST_SECRET not in text and TEST_ADMIN_TOKEN not in text


def test_phase_table_file_json_and_yaml(tmp_path: Path) -> None:
    (tmp_path / "t.json").write_text('{"my-tool": {"feeds": ["running"], "primary": ["running"]}}')
    (tmp_path / "t.yaml").write_text("my-tool:\n  feeds: [running, exporting_results]\n  primary: []\n")
    assert load_phase_table(str(tmp_path / "t.json")) == {"my-tool": {"feeds": ("running",),
                                                                      "primary": ("running",)}}
    assert load_phase_table(str(tmp_path / "t.yaml"))["my-tool"]["feeds"] == ("running", "exporting_results")
    (tmp_path / "bad.json").write_text('{"my-tool": {"feeds": ["Running"]}}')
    with pytest.raises(ConfigError):
        load_phase_table(str(tmp_path / "bad.json"))
    cfg = AggregatorConfig.from_env({"BLAST_LOGS_SECRET": "hush-secret", "BLAST_LOGS_ADMIN_TOKEN": "hush-admin",
                                     "BLAST_LOGS_AZURE_CONNECTION_STRING": "AccountKey=hush-key",
                                     "BLAST_LOGS_PHASE_TABLE": str(tmp_path / "t.json")})
    assert cfg.phase_table == {"my-tool": {"feeds": ("running",), "primary": ("running",)}}
    assert "hush" not in repr(cfg)
