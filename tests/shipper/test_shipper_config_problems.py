"""`read_config` names every configuration problem, one line each, and still returns a configuration
the fail-open sidecar can run with (`load_config` stays the strict form)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shipper.config import ConfigError, load_config, read_config, url_problem

ENV = {"BLAST_LOGS_AGGREGATOR_URL": "http://a:1", "BLAST_LOGS_TOKEN": "elb-1.mac",
       "BLAST_LOGS_JOB_ID": "elb-1", "BLAST_LOGS_POD": "p"}


def test_a_good_configuration_has_no_problem_and_no_warning() -> None:
    loaded = read_config([], ENV)
    assert loaded.problems == () and loaded.warnings == ()
    assert loaded.config.require_shipping is False and loaded.config.reclaim is True


def test_every_problem_is_named_at_once_and_defaults_stand_in() -> None:
    env = {"BLAST_LOGS_AGGREGATOR_URL": "127.0.0.1:8080,ftp://x", "BLAST_LOGS_GRACE": "soon",
           "BLAST_LOGS_PHASE": "Running!", "BLAST_LOGS_POD": "Not_A_Name", "BLAST_LOGS_READ_SIZE": "0"}
    loaded = read_config(["--job-id", "../etc", "--bogus"], env)
    text = "\n".join(loaded.problems)
    for said in ("command line: unrecognized arguments: --bogus", "'127.0.0.1:8080' is not an http://",
                 "'ftp://x' is not an http://", "BLAST_LOGS_GRACE / --grace: not a number: 'soon'",
                 "'Running!' is not a phase name", "'Not_A_Name' is not a Kubernetes name",
                 "--read-size must be positive", "no job token"):
        assert said in text, said
    assert all("\n" not in p for p in loaded.problems)
    cfg = loaded.config
    assert cfg.grace == 25.0 and cfg.read_size == 256 * 1024  # the defaults, for what runs anyway
    with pytest.raises(ConfigError, match="not a number"):
        load_config(["--job-id", "../etc"], env)


def test_a_token_for_another_job_is_a_warning() -> None:
    loaded = read_config([], {**ENV, "BLAST_LOGS_TOKEN": "elb-2.mac"})
    assert loaded.problems == () and "does not name job 'elb-1'" in loaded.warnings[0]


def test_the_token_file_is_read_again_each_time(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    env = {k: v for k, v in ENV.items() if k != "BLAST_LOGS_TOKEN"}
    assert "cannot read the token file" in read_config(["--token-file", str(token_file)], env).problems[0]
    token_file.write_text("")
    assert "is empty" in read_config(["--token-file", str(token_file)], env).problems[0]
    token_file.write_text("elb-1.mac\n")
    assert read_config(["--token-file", str(token_file)], env).config.token == "elb-1.mac"


@pytest.mark.parametrize(("url", "problem"), [
    ("http://a:8080", None), ("https://agg.example/prefix", None), ("127.0.0.1:8080", "did you mean http://127.0.0.1:8080?"),
    ("ftp://x", "not an http:// or https:// URL"), ("http://", "not an http:// or https:// URL"),
    ("http://a:port", "malformed port"), ("http://a/?x=1", "no query or fragment"),
])
def test_aggregator_urls(url: str, problem: str | None) -> None:
    found = url_problem(url)
    assert (found is None) if problem is None else (found is not None and problem in found)
