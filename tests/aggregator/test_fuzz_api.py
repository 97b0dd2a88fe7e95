"""Property-based fuzzing of every aggregator endpoint: never a 500, never a hang, healthy afterwards.

`make_app` serves on a real loopback socket from a background thread; hypothesis drives raw HTTP/1.1
bytes at it from the test thread (so paths, header names and values are not constrained by any
client library), each exchange bounded by a socket timeout. After the examples the module checks the
service: no 500 in its metrics, no unhandled error logged, no ingest slot leaked, probes green, a
real ingest and finalize still work, and nothing was written outside the store's root.
"""

from __future__ import annotations

import gzip
import os
import urllib.parse
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from agg_helpers import JOB, POD, batch, events
from agg_strategies import INT64, batch_objects
from conftest import TEST_ADMIN_TOKEN, TEST_SECRET
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from live_app import Answer, Live, exchange, request, serve_in_thread

from aggregator.auth import job_token, read_token
from aggregator.openapi import LOGS_PATH, OPENAPI_PATH, STREAMS_PATH, VIEW_PATH
from blastlogs.protocol import FINALIZE_PATH, INGEST_PATH, valid_job_id

FUZZ = settings(max_examples=int(os.environ.get("BLAST_LOGS_FUZZ_EXAMPLES", "250")), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    # A short finalize wait and body deadline keep every exchange quick; small limits are reached often.
    with serve_in_thread(tmp_path_factory.mktemp("fuzz"), finalize_max_wait=0.3, lock_wait=0.5,
                         body_timeout=2.0, max_body_bytes=256 * 1024, max_events=50) as app:
        yield app


def check(live: Live, raw: bytes, answer: Answer | None) -> None:
    """No 500s; every answer of ours (not aiohttp's HTTP parser) is the JSON error shape."""
    if answer is None:
        return
    live.statuses.append(answer.status)
    assert answer.status < 500 or answer.status == 503, answer
    if answer.status == 503:  # storage trouble or a held lock: only with Retry-After
        assert "retry-after" in answer.headers, answer
    if (answer.status >= 400 and answer.headers.get("content-type", "").startswith("application/json")
            and not raw.upper().startswith(b"HEAD ")):
        doc = orjson.loads(answer.body)
        assert set(doc) == {"error", "detail"}, doc


# --- strategies ---------------------------------------------------------------------------------

_TEXT = st.text(max_size=40)
_HEADER_VALUE = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E) | st.sampled_from("é\t\x7f€"),
                        max_size=60)


@st.composite
def auth_headers(draw: st.DrawFn, job_id: Any) -> dict[str, str]:
    own = job_token(TEST_SECRET, job_id) if isinstance(job_id, str) and valid_job_id(job_id) else None
    choice = draw(st.sampled_from(["own", "own", "own", "other", "admin", "none", "garbage", "wrong-secret"]))
    token = {
        "own": own or job_token(TEST_SECRET, JOB),
        "other": job_token(TEST_SECRET, "some-other-job"),
        "admin": TEST_ADMIN_TOKEN,
        "wrong-secret": job_token("not-the-secret", job_id if own else JOB),
        "garbage": draw(_HEADER_VALUE),
        "none": None,
    }[choice]
    if token is None:
        return {}
    scheme = draw(st.sampled_from(["Bearer ", "Bearer ", "bearer ", "Basic ", "", "Bearer  "]))
    return {"Authorization": scheme + token}


@st.composite
def ingest_requests(draw: st.DrawFn) -> bytes:
    obj = draw(batch_objects())
    body = draw(st.one_of(st.just(orjson.dumps(obj)), st.binary(max_size=300)))
    job_id = obj.get("job_id") if isinstance(obj, dict) else None
    headers = draw(auth_headers(job_id))
    encoding = draw(st.sampled_from([None, None, "gzip", "gzip", "x-gzip", "deflate", "br", "identity", "gzip, br"]))
    if encoding is not None:
        headers["Content-Encoding"] = encoding
        if encoding in ("gzip", "x-gzip") and draw(st.booleans()):
            body = gzip.compress(body)
    if draw(st.booleans()):
        headers["Content-Type"] = draw(st.sampled_from(["application/json", "text/plain", "", "application/json; charset=latin-1"]))
    return request("POST", INGEST_PATH, headers, body)


def _quoted_id() -> st.SearchStrategy[str]:
    return st.one_of(
        st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True),
        st.just(JOB),
        st.sampled_from(["..", "%2e%2e", "a%2fb", "a%2F..%2F..%2Fetc", "%00", "a%00b", "%ff%fe", "é", "a" * 200]),
        _TEXT.map(lambda s: urllib.parse.quote(s, safe="")),
    )


@st.composite
def finalize_requests(draw: st.DrawFn) -> bytes:
    job_id = draw(_quoted_id())
    path = FINALIZE_PATH.format(job_id=job_id)
    body_obj = draw(st.one_of(
        st.fixed_dictionaries({}, optional={
            "wait_seconds": st.one_of(st.floats(allow_nan=False), INT64, _TEXT, st.none(), st.booleans()),
            "existing_last_output": st.one_of(st.dictionaries(_TEXT, st.one_of(_TEXT, INT64), max_size=3),
                                              _TEXT, st.lists(_TEXT, max_size=2)),
        }),
        st.lists(INT64, max_size=2),
    ))
    body = draw(st.one_of(st.just(orjson.dumps(body_obj)), st.binary(max_size=100), st.just(b"")))
    choice = draw(st.sampled_from(["admin", "admin", "job", "none", "garbage"]))
    headers = {"admin": {"Authorization": f"Bearer {TEST_ADMIN_TOKEN}"},
               "job": {"Authorization": f"Bearer {job_token(TEST_SECRET, JOB)}"},
               "none": {}, "garbage": {"Authorization": draw(_HEADER_VALUE)}}[choice]
    return request(draw(st.sampled_from(["POST", "POST", "POST", "GET", "PUT"])), path, headers, body)


_QUERY_VALUE = st.one_of(_TEXT, st.sampled_from(["running", "blast", POD, "10m", "2026-12-07T00:00:00Z", "0", "1",
                                                 "5000", "5001", "-1", "1e9", "text", "ndjson", "chunks",
                                                 "staging", "WyJzIiwiYSIsImIiLCJjIiwxXQ", "WyJjIiwiYSIsMCwwXQ"]))


@st.composite
def read_requests(draw: st.DrawFn) -> bytes:
    """The read routes: ids, every query parameter with odd values, every kind of token. Never a follow
    that could wait for new lines (a follow gets a Last-Event-ID it must refuse, or finds every stream
    ended)."""
    job_id = draw(st.one_of(st.just(JOB), _quoted_id()))
    path = draw(st.sampled_from([LOGS_PATH, STREAMS_PATH, VIEW_PATH])).format(job_id=job_id)
    names = ["phase", "pod", "container", "since", "position", "tail", "limit", "cursor", "format", "prefix",
             "source", "x"]
    query = draw(st.lists(st.tuples(st.sampled_from(names), _QUERY_VALUE), max_size=4))
    headers = {"admin": {"Authorization": f"Bearer {TEST_ADMIN_TOKEN}"},
               "read": {"Authorization": f"Bearer {read_token(TEST_SECRET, JOB)}"},
               "job": {"Authorization": f"Bearer {job_token(TEST_SECRET, JOB)}"},
               "none": {}}[draw(st.sampled_from(["admin", "read", "read", "job", "none"]))]
    if draw(st.booleans()):
        query.append(("follow", "1"))
        headers = {**headers, "Last-Event-ID": draw(st.text(
            alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40))}
    if query:
        path += "?" + urllib.parse.urlencode(query)
    return request(draw(st.sampled_from(["GET", "GET", "GET", "HEAD", "POST"])), path, headers, b"")


_PATHS = st.one_of(
    st.sampled_from([INGEST_PATH, "/healthz", "/readyz", "/metrics", OPENAPI_PATH, "/", "/v1", "/v1/jobs",
                     "/v1/jobs//finalize", "/v1/jobs/a/finalize/extra", "//v1/ingest", "/v1/ingest/",
                     "/v1/./ingest", "/v1/../v1/ingest", "/%2e%2e/%2e%2e/etc/passwd", "/healthz?x=1&y",
                     "*", "http://127.0.0.1/healthz", "/v1/ingest#frag", "/" + "a" * 5000]),
    st.binary(min_size=1, max_size=60).map(lambda b: "/" + urllib.parse.quote(b, safe="/%?=&")),
)


@st.composite
def raw_requests(draw: st.DrawFn) -> bytes:
    """Anything from a plausible request to a broken one: methods, paths, header names/values, framing."""
    method = draw(st.sampled_from(["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "BREW",
                                   "get", "G\x00T"]))
    path = draw(_PATHS)
    version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.1x", ""]))
    head = [f"{method} {path} {version}".rstrip(), "Host: 127.0.0.1", "Connection: close"]
    names = st.one_of(st.sampled_from(["Authorization", "Content-Type", "Content-Encoding", "Transfer-Encoding",
                                       "Expect", "X-Forwarded-For", "Cookie", "Range"]),
                      st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=20))
    for name, value in draw(st.lists(st.tuples(names, _HEADER_VALUE), max_size=6)):
        if name.lower() not in ("content-length", "connection", "host", "transfer-encoding"):
            head.append(f"{name}: {value}")
    body = draw(st.binary(max_size=200))
    head.append(f"Content-Length: {len(body)}")
    raw = "\r\n".join(head).encode("utf-8", "surrogateescape") + b"\r\n\r\n" + body
    if draw(st.integers(0, 9)) == 0:  # a line with bytes HTTP forbids
        raw = raw.replace(b"Host:", draw(st.sampled_from([b"Ho\x00st:", b"Host :", b"\x01Host:", b"Ho\rst:"])), 1)
    return raw


# --- the fuzz tests: each fuzzes, then checks the service came through it (in any order, or alone) ---

@FUZZ
@given(raw=ingest_requests())
def fuzz_ingest(live: Live, raw: bytes) -> None:
    check(live, raw, exchange(live.port, raw))


@FUZZ
@given(raw=finalize_requests())
def fuzz_finalize(live: Live, raw: bytes) -> None:
    check(live, raw, exchange(live.port, raw))


@FUZZ
@given(raw=read_requests())
def fuzz_read(live: Live, raw: bytes) -> None:
    check(live, raw, exchange(live.port, raw))


@FUZZ
@given(raw=raw_requests())
def fuzz_any_request(live: Live, raw: bytes) -> None:
    check(live, raw, exchange(live.port, raw))


def test_fuzz_ingest(live: Live) -> None:
    fuzz_ingest(live)
    assert_healthy_after_fuzzing(live)


def test_fuzz_finalize(live: Live) -> None:
    fuzz_finalize(live)
    assert_healthy_after_fuzzing(live)


def test_fuzz_read(live: Live) -> None:
    fuzz_read(live)
    assert_healthy_after_fuzzing(live)


def test_fuzz_any_request(live: Live) -> None:
    fuzz_any_request(live)
    assert_healthy_after_fuzzing(live)


def assert_healthy_after_fuzzing(live: Live) -> None:
    """The fuzzing left no 500, no unhandled error, no leak, no stray file; the service still works."""
    assert live.statuses, "the fuzzing got no answer at all"
    text = live.metrics_text()
    assert 'status="500"' not in text
    assert "blast_logs_aggregator_ingests_in_flight 0.0" in text
    assert not live.errors.records, [r.getMessage() for r in live.errors.records]
    assert exchange(live.port, request("GET", "/healthz", {})).status == 200  # type: ignore[union-attr]
    assert exchange(live.port, request("GET", "/readyz", {})).status == 200  # type: ignore[union-attr]
    token = {"Authorization": f"Bearer {job_token(TEST_SECRET, JOB)}"}
    body = orjson.dumps(batch(pod=POD, container="blast", evs=events([10 ** 9]), eof=True))
    answer = exchange(live.port, request("POST", INGEST_PATH, token, body))
    assert answer is not None and answer.status == 200, answer
    answer = exchange(live.port, request("POST", FINALIZE_PATH.format(job_id=JOB),
                                         {"Authorization": f"Bearer {TEST_ADMIN_TOKEN}"}, b"{}"))
    assert answer is not None and answer.status == 200, answer
    answer = exchange(live.port, request("GET", LOGS_PATH.format(job_id=JOB) + "?pod=" + POD,
                                         {"Authorization": f"Bearer {read_token(TEST_SECRET, JOB)}"}, b""))
    assert answer is not None and answer.status == 200 and f"line {10 ** 9}".encode() in answer.body, answer
    # Nothing outside the store's root; inside it, only `{valid job id}/execution-steps/...`.
    assert sorted(p.name for p in live.root.iterdir()) == ["store"]
    for path in live.store_root.rglob("*"):
        rel = path.relative_to(live.store_root).parts
        assert valid_job_id(rel[0]), path
        if len(rel) > 1:
            assert rel[1] == "execution-steps", path
    # Every answer the fuzzers got is a status the service documents, or aiohttp's own for bad HTTP
    # (400, 414/431 for oversized request lines and headers, 417 for an unknown `Expect`).
    ours = {200, 400, 401, 403, 404, 405, 408, 413, 429, 503}
    assert set(live.statuses) <= ours | {414, 417, 431}, sorted(set(live.statuses))
