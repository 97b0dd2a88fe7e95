"""Unknown `BLAST_LOGS_*` variables are named at startup with the closest known name, by both
programs; both answer `--version` with the installed distribution's version (issue 17)."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

from conftest import ROOT
from shipper_helpers import start_shipper

from blastlogs.envnames import unknown_settings


def test_unknown_names_get_the_closest_known_one() -> None:
    known = ["BLAST_LOGS_GRACE", "BLAST_LOGS_TOKEN", "BLAST_LOGS_TOKEN_FILE", "BLAST_LOGS_AGGREGATOR_URL"]
    env = {"BLAST_LOGS_GRACE": "1", "BLAST_LOGS_GRACEE": "1", "BLAST_LOGS_TOKN": "s3cret-value",
           "BLAST_LOGS_AGGREGATOR_URLS": "x", "BLAST_LOGS_ZZZZZZZZZZZZZ": "x", "PATH": "/bin", "blast_logs_grace": "1"}
    lines = unknown_settings(env, known, "prog")
    assert lines == [
        "BLAST_LOGS_AGGREGATOR_URLS is not a setting of prog; did you mean BLAST_LOGS_AGGREGATOR_URL?",
        "BLAST_LOGS_GRACEE is not a setting of prog; did you mean BLAST_LOGS_GRACE?",
        "BLAST_LOGS_TOKN is not a setting of prog; did you mean BLAST_LOGS_TOKEN?",
        "BLAST_LOGS_ZZZZZZZZZZZZZ is not a setting of prog (ignored)",
    ]
    assert not any("s3cret" in line for line in lines)
    assert unknown_settings({"BLAST_LOGS_GRACE": "1"}, known, "prog") == []


def _records(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


async def test_the_shipper_warns_about_a_misspelt_setting(volume: Path, recorder: Any) -> None:
    shipper = await start_shipper(volume, [recorder.url], BLAST_LOGS_GRACEE="5", BLAST_LOGS_LINGR="1")
    try:
        await shipper.started()
        warned = [r.get("warning", r["msg"]) for r in shipper.log() if r.get("level") == "warning"]
        assert "BLAST_LOGS_GRACEE is not a setting of blast-log-shipper run; did you mean BLAST_LOGS_GRACE?" in warned
        assert any(m.startswith("BLAST_LOGS_LINGR ") and "BLAST_LOGS_LINGER?" in m for m in warned)
    finally:
        assert await shipper.stop() == 0


def test_the_aggregator_warns_about_a_misspelt_setting(start_aggregator: Any) -> None:
    agg = start_aggregator(BLAST_LOGS_LOCK_WIAT="5", BLAST_LOGS_MAX_EVENT="10")
    agg.stop()
    warned = [r["msg"] for r in _records(agg.log_path.read_text()) if r["level"] == "warning"]
    assert "BLAST_LOGS_LOCK_WIAT is not a setting of blast-log-aggregator serve; did you mean BLAST_LOGS_LOCK_WAIT?" \
        in warned
    assert any(m.startswith("BLAST_LOGS_MAX_EVENT ") and "BLAST_LOGS_MAX_EVENTS?" in m for m in warned)


def test_both_programs_answer_version() -> None:
    expected = version("blast-logs")
    for module, prog in (("shipper", "blast-log-shipper"), ("aggregator.cli", "blast-log-aggregator")):
        proc = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True,
                              cwd=ROOT, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == f"{prog} {expected}\n"
