"""The aggregator's one exception tree and its one table of HTTP answers."""

from __future__ import annotations

import pytest

from aggregator import errors
from aggregator.errors import (
    HTTP_ANSWERS,
    AggregatorError,
    AuthError,
    BlobPutError,
    ConfigError,
    JobNotFound,
    StoreError,
    code_of_status,
    http_answer,
)


def test_every_error_class_is_in_the_one_tree() -> None:
    kinds = [v for v in vars(errors).values() if isinstance(v, type) and issubclass(v, BaseException)]
    assert len(kinds) >= 20
    assert all(issubclass(k, AggregatorError) for k in kinds)


def test_auth_errors_carry_no_status_the_table_gives_it() -> None:
    from aggregator.auth import check_admin, check_ingest

    with pytest.raises(AuthError) as e:
        check_ingest(None, "s", "admin")
    assert not hasattr(e.value, "status")
    assert http_answer(type(e.value)) == (401, "unauthorized")
    with pytest.raises(AuthError) as e:
        check_ingest("Bearer admin", "s", "admin")
    assert http_answer(type(e.value)) == (403, "forbidden")
    with pytest.raises(AuthError) as e:
        check_admin("Bearer nope", "s", "admin")
    assert http_answer(type(e.value)) == (401, "unauthorized")


def test_subclasses_answer_as_their_nearest_listed_ancestor() -> None:
    assert http_answer(JobNotFound) == (404, "not_found")
    assert http_answer(BlobPutError) == (503, "storage_unavailable")
    assert http_answer(ConfigError) is None  # a configuration error is never an HTTP answer
    assert set(HTTP_ANSWERS.values()) >= {(503, "busy"), (503, "draining"), (429, "busy")}


def test_storage_errors_never_show_their_internal_message() -> None:
    e = StoreError("azure put container/elb-1/key: HTTP 500")
    assert e.detail == "storage is unavailable; retry later"
    assert StoreError("x", detail="storage is unreachable").detail == "storage is unreachable"


def test_codes_of_statuses_aiohttp_raises_itself() -> None:
    assert {s: code_of_status(s) for s in (400, 401, 403, 404, 405, 408, 413, 429, 503, 418)} == {
        400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
        408: "timeout", 413: "too_large", 429: "busy", 503: "unavailable", 418: "error"}
