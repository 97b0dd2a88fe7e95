"""The aggregator refuses to start on malformed settings: one clear line per setting at fault,
flags checked like variables, nothing secret repeated (issue 17)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TEST_ADMIN_TOKEN, TEST_SECRET, aggregator_env

from aggregator.config import AggregatorConfig
from aggregator.errors import ConfigError


def serve(env: dict[str, str], *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aggregator.cli", "serve", *flags], env=env,
                          capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("override, flags, needle", [
    ({"BLAST_LOGS_LOG_LEVEL": "LOUD"}, (), "BLAST_LOGS_LOG_LEVEL='LOUD' is not one of DEBUG, INFO, WARNING, ERROR"),
    ({"BLAST_LOGS_SECRET": "   "}, (), "BLAST_LOGS_SECRET is blank"),
    ({"BLAST_LOGS_ADMIN_TOKEN": " "}, (), "BLAST_LOGS_ADMIN_TOKEN is blank"),
    ({}, ("--port", "70000"), "--port=70000 is above its maximum 65535"),
    ({}, ("--port", "-1"), "--port=-1 is below its minimum 0"),
    ({"BLAST_LOGS_RETRY_AFTER": "soon"}, (), "BLAST_LOGS_RETRY_AFTER='soon' is not an integer"),
    ({"BLAST_LOGS_STORE": "ftp://x"}, (), "unsupported store 'ftp://x'"),
], ids=["log-level", "blank-secret", "blank-admin-token", "port-high", "port-negative", "not-int", "store"])
def test_a_malformed_setting_is_one_line_and_no_start(tmp_path: Path, override: dict[str, str],
                                                       flags: tuple[str, ...], needle: str) -> None:
    out = serve(aggregator_env(f"file://{tmp_path}/store", override), "--host", "127.0.0.1", *flags)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.splitlines()
    assert lines == [f"blast-log-aggregator: {needle}"] or (
        len(lines) == 1 and lines[0].startswith("blast-log-aggregator: ") and needle in lines[0]), out.stderr
    assert "Traceback" not in out.stderr and out.stdout == ""
    assert TEST_SECRET not in out.stderr and TEST_ADMIN_TOKEN not in out.stderr


def test_every_malformed_setting_is_named_at_once(tmp_path: Path) -> None:
    env = aggregator_env(f"file://{tmp_path}/store", {"BLAST_LOGS_LOG_LEVEL": "chatty", "BLAST_LOGS_MAX_EVENTS": "0",
                                                      "BLAST_LOGS_BODY_TIMEOUT": "nan"})
    out = serve(env, "--port", "99999")
    assert out.returncode == 2
    lines = out.stderr.splitlines()
    assert len(lines) == 4 and all(line.startswith("blast-log-aggregator: ") for line in lines)
    for name in ("--port", "BLAST_LOGS_MAX_EVENTS", "BLAST_LOGS_BODY_TIMEOUT", "BLAST_LOGS_LOG_LEVEL"):
        assert sum(name in line for line in lines) == 1, name


def test_a_good_log_level_is_taken_in_any_case() -> None:
    env = {"BLAST_LOGS_SECRET": "s", "BLAST_LOGS_ADMIN_TOKEN": "a", "BLAST_LOGS_LOG_LEVEL": "debug"}
    assert AggregatorConfig.from_env(env).log_level == "debug"
    with pytest.raises(ConfigError, match="above its maximum"):
        AggregatorConfig.from_env(env, port=65536)
    assert AggregatorConfig.from_env(env, port=0).port == 0
