"""The README's first quick-start command: the whole data path, for real, on the local store."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT


@pytest.mark.skipif(shutil.which("blastn") is None, reason="ncbi-blast+ not installed")
def test_demo_runs_blast_end_to_end_and_prints_its_error_and_exit_code(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "shipper", "demo", "--dir", str(tmp_path / "demo")],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "finalize complete=True" in out
    # BLAST's own error line and the exit code reach the running phase's summary.
    running = out.split("=== phase running")[1].split("=== phase")[0]
    assert "Error: Argument \"evalue\". Argument cannot be converted" in running
    assert "[exit code 1]" in running
    summary = json.loads((tmp_path / "demo/store/elb-demo-1/execution-steps/summary.json").read_text())
    assert summary["complete"] is True
    blast = summary["steps"]["running"]["containers"][0]
    assert blast["container"] == "blast" and blast["exit_code"] == 1
    # Every line BLAST wrote (both runs of the container) is in the artifacts once.
    written = (tmp_path / "demo/pod-volume/logs/blast.log").read_text().splitlines()
    chunk = json.loads((tmp_path / "demo/store/elb-demo-1/execution-steps/logs/running/0.json").read_text())
    assert [e["line"] for e in chunk["events"]] == written
    # It ends with the job read back, the viewer's URL and the command that follows the job.
    read_back = out.split("its last lines, read back")[1]
    assert f"blastn-batch-demo-job-0-abc12/blast {written[-1]}" in read_back
    assert "/v1/jobs/elb-demo-1/view#token=elb-demo-1." in out
    assert "blast-log-aggregator logs elb-demo-1 --url http://127.0.0.1:8080 -f" in out.splitlines()[-1]
