"""The shared line cap and id rules (docs/protocol.md section 4)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from blastlogs.protocol import (
    MAX_LINE_CHARS,
    cap_line,
    cut_marker,
    valid_job_id,
    valid_k8s_name,
    valid_phase,
)


def test_short_line_is_untouched() -> None:
    assert cap_line("x" * MAX_LINE_CHARS) == "x" * MAX_LINE_CHARS


def test_long_line_is_cut_to_exactly_the_limit_with_the_removed_count() -> None:
    out = cap_line("a" * 5000)
    assert len(out) == MAX_LINE_CHARS
    kept = out.index(" [...")
    assert out == "a" * kept + cut_marker(5000 - kept)


def test_held_prefix_shorter_than_the_cap_counts_only_what_is_missing() -> None:
    assert cap_line("prefix", extra_chars=1_000_000) == "prefix" + cut_marker(1_000_000)


@given(st.integers(min_value=0, max_value=20_000), st.integers(min_value=0, max_value=10**9),
       st.integers(min_value=30, max_value=5000))
def test_cap_never_exceeds_the_limit_and_accounts_for_every_char(n: int, extra: int, limit: int) -> None:
    line = "é" * n
    out = cap_line(line, limit, extra)
    if n + extra <= limit:
        assert out == line
        return
    assert len(out) <= limit
    kept = out.index(" [... ")
    assert out[:kept] == line[:kept]
    assert out[kept:] == cut_marker(n + extra - kept)


def test_id_rules() -> None:
    assert valid_job_id("elb-123") and valid_job_id("A" * 128) and not valid_job_id("A" * 129)
    assert not valid_job_id("-x") and not valid_job_id("a/b") and not valid_job_id("a\x00")
    assert valid_k8s_name("blastn-batch-7.abc") and not valid_k8s_name("Blast")
    assert not valid_k8s_name("a" * 254) and not valid_k8s_name("..") and not valid_k8s_name("a-")
    assert valid_phase("running") and not valid_phase("Running") and not valid_phase("1x")
