"""`blast-log-shipper run` options: one table (`shipper.config.OPTIONS`) drives flags, environment,
defaults, `--help` and the README's reference."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from shipper_helpers import ROOT

from shipper.config import OPTIONS, ConfigError, Option, load_config, markdown_table

BEGIN, END = "<!-- shipper options: begin", "<!-- shipper options: end -->"
ENV = {"BLAST_LOGS_AGGREGATOR_URL": "http://a:1", "BLAST_LOGS_TOKEN": "t", "BLAST_LOGS_JOB_ID": "j",
       "BLAST_LOGS_POD": "p"}


def test_the_readme_option_reference_is_the_generated_table() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split(BEGIN, 1)[1].split(END, 1)[0]
    assert section.split("\n", 1)[1] == markdown_table(), (
        "README.md's shipper options differ from shipper/config.py OPTIONS; regenerate with "
        "python -c \"from shipper.config import markdown_table; print(markdown_table(), end='')\"")


def test_every_option_has_its_env_name_and_flag_once() -> None:
    envs = [o.env for o in OPTIONS]
    flags = [o.flag for o in OPTIONS if o.flag is not None]
    assert len(set(envs)) == len(envs) and len(set(flags)) == len(flags)
    assert all(e.startswith("BLAST_LOGS_") for e in envs)
    # the names docs/protocol.md section 8 fixes
    assert {"BLAST_LOGS_DIR", "BLAST_LOGS_AGGREGATOR_URL", "BLAST_LOGS_TOKEN", "BLAST_LOGS_TOKEN_FILE",
            "BLAST_LOGS_JOB_ID", "BLAST_LOGS_POD", "BLAST_LOGS_NAMESPACE", "BLAST_LOGS_PHASE"} <= set(envs)
    assert [o.env for o in OPTIONS if o.flag is None] == ["BLAST_LOGS_TOKEN"]  # a secret is never a flag


def test_help_names_every_flag_env_and_default() -> None:
    done = subprocess.run([sys.executable, "-m", "shipper", "run", "--help"], capture_output=True,
                          text=True, timeout=60, env={"COLUMNS": "400", "PATH": ""})
    assert done.returncode == 0
    for opt in OPTIONS:
        if opt.flag is not None:
            assert opt.flag in done.stdout and opt.env in done.stdout


@pytest.mark.parametrize("opt", [o for o in OPTIONS if o.flag is not None and not o.required], ids=lambda o: o.name)
def test_each_default_is_what_loads_when_nothing_is_given(opt: Option) -> None:
    cfg = load_config([], ENV)
    value = getattr(cfg, {"dir": "volume"}.get(opt.name, opt.name), None)
    if opt.name == "dir":
        assert value == Path(str(opt.default))
    elif opt.name == "sanitise_workers":
        assert value == int(str(opt.default))
    elif opt.name == "token_file":
        assert cfg.token == "t"
    else:
        assert value == opt.default


def test_flags_win_over_the_environment_which_wins_over_defaults() -> None:
    env = {**ENV, "BLAST_LOGS_LINGER": "0.7", "BLAST_LOGS_GRACE": "9", "BLAST_LOGS_GZIP": "yes"}
    cfg = load_config(["--grace", "3", "--no-gzip"], env)
    assert cfg.grace == 3 and cfg.linger == 0.7 and cfg.gzip is False
    assert load_config([], env).gzip is True
    assert cfg.urls == ("http://a:1",) and cfg.phase == "unknown"
    assert load_config([], {**ENV, "BLAST_LOGS_PHASE": ""}).phase == "unknown"
    assert load_config([], {**ENV, "BLAST_LOGS_POLL_INTERVAL": "0"}).poll_interval == 0.01


@pytest.mark.parametrize(("argv", "env", "match"), [
    (["--read-size", "0"], {}, "--read-size must be positive"),
    (["--grace", "-1"], {}, "--grace must not be negative"),
    ([], {"BLAST_LOGS_LINGER": "soon"}, "BLAST_LOGS_LINGER / --linger: not a number"),
    ([], {"BLAST_LOGS_AGGREGATOR_URL": " , "}, "holds no URL"),
])
def test_bad_values_name_the_option(argv: list[str], env: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(argv, {**ENV, **env})
