"""What a refusal's log line may name: ids the client sent, unless they could be a secret."""

from __future__ import annotations

from aggregator.auth import job_token
from aggregator.errors import Forbidden, Unauthorized
from aggregator.refusals import refusal_of

TOKEN = job_token("k", "elb-1")


def test_a_token_sent_where_a_job_id_goes_is_never_named() -> None:
    # As the batch's job id, and as the job a bearer token seems to name (`<token>.x`).
    refused = refusal_of(Unauthorized("x"), f"Bearer {TOKEN}.x", finalize=False, job=TOKEN, pod="p-1")
    assert refused.token_job is None and refused.job is None and refused.pod == "p-1"
    assert TOKEN not in repr(refused.fields())
    ordinary = refusal_of(Unauthorized("x"), "Bearer elb-2.nomac", finalize=False, job="elb-2.run-1")
    assert ordinary.token_job == "elb-2" and ordinary.job == "elb-2.run-1"


def test_a_finalize_paths_job_id_is_named_only_once_the_token_held() -> None:
    assert refusal_of(Unauthorized("x"), "Bearer nope", finalize=True, job="my-admin-secret").job is None
    assert refusal_of(Forbidden("x"), f"Bearer {TOKEN}", finalize=True, job="elb-1").job == "elb-1"
