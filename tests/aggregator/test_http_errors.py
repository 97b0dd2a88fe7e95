"""The aggregator's one exception tree and its one table of HTTP answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from agg_helpers import make_config

from aggregator import errors
from aggregator.app import make_app, start_draining
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
from aggregator.storage import LocalStore


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


async def test_answers_keep_their_bytes(aiohttp_client: Any, tmp_path: Path) -> None:
    """The middleware renders the table: readiness, draining, aiohttp's own 404/405, all as before."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    app = make_app(make_config(retry_after=2), store=LocalStore(blocker / "store"))
    client = await aiohttp_client(app)
    r = await client.get("/readyz")
    assert (r.status, r.headers["Retry-After"]) == (503, "2")
    assert await r.read() == b'{"error":"storage_unavailable","detail":"storage is unreachable"}'
    r = await client.get("/nowhere")
    assert (r.status, await r.read()) == (404, b'{"error":"not_found","detail":"Not Found"}')
    assert "Retry-After" not in r.headers
    r = await client.get("/v1/ingest")
    assert (r.status, await r.read()) == (405, b'{"error":"method_not_allowed","detail":"Method Not Allowed"}')
    assert r.headers["Allow"] == "POST"
    start_draining(app)
    r = await client.get("/readyz")
    assert (r.status, r.headers["Retry-After"]) == (503, "2")
    assert await r.read() == b'{"error":"draining","detail":"shutting down"}'
