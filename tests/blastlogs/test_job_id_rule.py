"""The job id rule: the contract's pattern, and no id storage could alias (docs/protocol.md section 4)."""

from __future__ import annotations

from blastlogs.protocol import JOB_ID_RE, JOB_ID_RULE, valid_job_id


def test_a_job_id_must_not_end_with_a_dot() -> None:
    for good in ("a", "elb-1", "elb.1", "a..b", "A" * 128, "x_", "x-"):
        assert valid_job_id(good), good
    for bad in ("a.", "elb-1.", "elb-1..", "A" * 127 + ".", ".", "..", ".a", "a/b", ""):
        assert not valid_job_id(bad), bad
    assert JOB_ID_RE.fullmatch("elb-1.")  # the contract's pattern alone would take it
    assert JOB_ID_RE.pattern in JOB_ID_RULE and "'.'" in JOB_ID_RULE
