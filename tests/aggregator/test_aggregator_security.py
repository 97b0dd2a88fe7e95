"""The aggregator against hostile clients: bad input, sizes, shapes, slow clients, tokens, a burst.

Each test is named in docs/security.md next to the threat it answers. HTTP tests send raw bytes to
`make_app` on a real socket (tests/live_app.py) or to the real `blast-log-aggregator serve` process.
"""

from __future__ import annotations

import asyncio
import gzip
import hmac
import socket
import struct
import threading
import time
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from agg_helpers import JOB, batch, events
from conftest import TEST_ADMIN_TOKEN, TEST_SECRET
from live_app import REQUEST_TIMEOUT, Answer, Live, exchange, read_answer, request, serve_in_thread

from aggregator.auth import check_admin, check_ingest, job_token, token_job_id
from aggregator.errors import Forbidden, Unauthorized
from aggregator.staging import decode_batch
from blastlogs.protocol import FINALIZE_PATH, INGEST_PATH, valid_job_id

JOB_AUTH = {"Authorization": f"Bearer {job_token(TEST_SECRET, JOB)}"}
ADMIN_AUTH = {"Authorization": f"Bearer {TEST_ADMIN_TOKEN}"}


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    with serve_in_thread(tmp_path, finalize_max_wait=0.5, lock_wait=0.5) as app:
        yield app


def post(live: Live, path: str, headers: dict[str, str], body: bytes | Any = b"") -> Answer:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    answer = exchange(live.port, request("POST", path, headers, data))
    assert answer is not None, "the server closed the connection without an answer"
    return answer


def healthy(live: Live) -> None:
    """Probes answer, no 500 was ever counted, no unhandled error was logged, no ingest slot leaked."""
    for probe in ("/healthz", "/readyz"):
        answer = exchange(live.port, request("GET", probe, {}))
        assert answer is not None and answer.status == 200, (probe, answer)
    text = live.metrics_text()
    assert 'status="500"' not in text
    assert "blast_logs_aggregator_ingests_in_flight 0.0" in text
    assert not live.errors.records, [r.getMessage() for r in live.errors.records]


def stored_files(live: Live) -> list[Path]:
    """Every file the service wrote, after checking none lies outside the store's root."""
    assert {p.name for p in live.root.iterdir()} <= {"store"}, sorted(live.root.iterdir())
    files = [p for p in live.store_root.rglob("*") if p.is_file()] if live.store_root.exists() else []
    for path in files:
        rel = path.resolve().relative_to(live.store_root.resolve()).parts
        assert valid_job_id(rel[0]) and rel[1] == "execution-steps", path
    return files


def staged_offs(store_root: Path, job_id: str = JOB) -> dict[tuple[str, str], set[int]]:
    """Per (pod, container), the offsets staged for `job_id`, read from the store's files."""
    out: dict[tuple[str, str], set[int]] = {}
    for path in (store_root / job_id / "execution-steps" / "_staging").rglob("b-*.json"):
        b = decode_batch(path.read_bytes())
        out.setdefault((b.pod, b.container), set()).update(off for off, _ts, _line in b.events)
    return out


# --- ids that try to leave the store ---------------------------------------------------------------

HOSTILE_IDS = ["..", "../x", "a/../../x", "/etc", "a/b", "a%2fb", "a%2Fb", "%2e%2e", "a\\..\\b", "C:\\x",
               "a\x00b", "\x00", "a\nb", "a\rb", "a\tb", "a\x1bb", "a\x7fb", "é", "ａ", "a\u202eb", "a\u2028b",
               " a", "a ", "~", "$HOME", "", ".", "-a", "a" * 254]


@pytest.mark.parametrize("field", ["job_id", "pod", "container"])
def test_hostile_ids_in_a_batch_are_refused_and_nothing_leaves_the_store(live: Live, field: str) -> None:
    assert post(live, INGEST_PATH, JOB_AUTH, batch(evs=events([0]))).status == 200  # the root exists
    for bad in HOSTILE_IDS:
        body = batch(evs=events([1]), **{field: bad})
        answer = post(live, INGEST_PATH, JOB_AUTH, body)
        assert answer.status == 400, (bad, answer)
        if field == "job_id" and bad and bad.isprintable() and bad.isascii():
            # Even a token minted for the hostile id itself (which needs the server secret) gets nowhere.
            own = {"Authorization": f"Bearer {job_token(TEST_SECRET, bad)}"}
            assert post(live, INGEST_PATH, own, body).status in (400, 401), bad
    # Odd but valid names stay plain folder names inside the root.
    odd = ("a..b", "0.0", "a.-b")
    for name in odd:
        assert post(live, INGEST_PATH, JOB_AUTH, batch(evs=events([2]), **{"pod" if field == "job_id" else field: name})).status == 200
    parts = {part for p in stored_files(live) for part in p.relative_to(live.store_root).parts}
    assert set(odd) <= parts
    healthy(live)


def test_hostile_job_ids_in_the_finalize_path_are_refused(live: Live) -> None:
    assert post(live, INGEST_PATH, JOB_AUTH, batch(evs=events([0]), eof=True)).status == 200
    paths = ["/v1/jobs/../finalize", "/v1/jobs/%2e%2e/finalize", "/v1/jobs/a%2f..%2f..%2fetc/finalize",
             "/v1/jobs/a%2Fb/finalize", "/v1/jobs/%00/finalize", "/v1/jobs/a%0ab/finalize", "/v1/jobs/%C3%A9/finalize",
             "/v1/jobs/%ff%fe/finalize", "/v1/jobs/a/b/finalize", "/v1/jobs//finalize", "/v1/jobs/" + "a" * 129 + "/finalize",
             "/v1/jobs/%2e/finalize", "/v1/jobs/-x/finalize", "/v1/jobs/a%5c..%5cb/finalize"]
    paths += [FINALIZE_PATH.format(job_id=urllib.parse.quote(bad, safe="")) for bad in HOSTILE_IDS]
    for path in paths:
        answer = post(live, path, ADMIN_AUTH, b"{}")
        assert answer.status in (400, 404, 405), (path, answer)
    before = {p: p.read_bytes() for p in stored_files(live)}
    assert post(live, FINALIZE_PATH.format(job_id=JOB), ADMIN_AUTH, b"{}").status == 200
    after = stored_files(live)
    assert set(before) <= set(after) and all(p.read_bytes() == b for p, b in before.items() if "_staging" in p.parts)
    healthy(live)


# --- sizes -------------------------------------------------------------------------------------------

def test_oversized_bodies_and_headers_are_refused(live: Live) -> None:
    cap = 1024 * 1024
    # A declared length over the cap is refused before any of it is read.
    answer = exchange(live.port, request("POST", INGEST_PATH, JOB_AUTH, b"{", content_length=cap * 64))
    assert answer is not None and answer.status == 413
    # Chunked, with no declared length: refused once the cap is crossed.
    chunk = b"x" * 65536
    framed = (f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n") * 20 + b"0\r\n\r\n"
    raw = (f"POST {INGEST_PATH} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n"
           f"Authorization: {JOB_AUTH['Authorization']}\r\n\r\n").encode() + framed
    answer = exchange(live.port, raw)
    assert answer is not None and answer.status == 413
    # Huge header values, too many headers, a huge request line: aiohttp's parser limits hold.
    for raw in (request("POST", INGEST_PATH, {**JOB_AUTH, "X-Big": "v" * 100_000}, b"{}"),
                request("POST", INGEST_PATH, {"Authorization": "Bearer " + "t" * 100_000}, b"{}"),
                request("POST", INGEST_PATH, {**JOB_AUTH, **{f"X-H{i}": "v" for i in range(500)}}, b"{}"),
                request("GET", "/healthz?" + "q" * 100_000, {})):
        answer = exchange(live.port, raw)
        assert answer is None or answer.status in (400, 413, 414, 431), answer
    assert stored_files(live) == []
    healthy(live)


def _gzip_bomb(mib: int) -> bytes:
    """`mib` MiB of zeros as one valid gzip member, built without compressing them all.

    After a full flush the compressor's state is reset, so every further MiB of zeros compresses to the
    same bytes: compress two, repeat the second.
    """
    block = bytes(1024 * 1024)
    z = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    first = z.compress(block) + z.flush(zlib.Z_FULL_FLUSH)
    again = z.compress(block) + z.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(mib):
        crc = zlib.crc32(block, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    return header + first + again * (mib - 1) + z.flush() + struct.pack("<II", crc, (mib << 20) & 0xFFFFFFFF)


def test_the_gzip_bomb_is_real() -> None:
    assert gzip.decompress(_gzip_bomb(8)) == bytes(8 * 1024 * 1024)


def _vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_gzip_bombs_are_413_and_memory_stays_flat(start_aggregator: Any) -> None:
    agg = start_aggregator()
    port = agg.port
    bomb = _gzip_bomb(512)  # 512 MiB inflated
    members = gzip.compress(bytes(1024 * 1024)) * 200  # 200 members of 1 MiB each
    assert len(bomb) < 1024 * 1024 and len(members) < 1024 * 1024
    gz = {**JOB_AUTH, "Content-Encoding": "gzip"}
    assert exchange(port, request("POST", INGEST_PATH, JOB_AUTH, orjson.dumps(batch()))).status == 200  # type: ignore[union-attr]
    before = _vm_hwm_kib(agg.proc.pid)
    for body in (bomb, members, bomb):
        answer = exchange(port, request("POST", INGEST_PATH, gz, body))
        assert answer is not None and answer.status == 413, answer
    answer = exchange(port, request("POST", FINALIZE_PATH.format(job_id=JOB), {**ADMIN_AUTH, "Content-Encoding": "gzip"}, bomb))
    assert answer is not None and answer.status == 413
    grown_mib = (_vm_hwm_kib(agg.proc.pid) - before) / 1024
    assert grown_mib < 48, f"the aggregator's peak memory grew {grown_mib:.0f} MiB on gzip bombs"
    assert exchange(port, request("GET", "/healthz", {})).status == 200  # type: ignore[union-attr]


# --- shapes --------------------------------------------------------------------------------------------

def test_deeply_nested_json_is_400(live: Live) -> None:
    deep = 100_000
    bodies = [b"[" * deep + b"]" * deep,
              b'{"a":' * deep + b"1" + b"}" * deep,
              orjson.dumps(batch())[:-1] + b',"extra":' + b"[" * deep + b"]" * deep + b"}",
              orjson.dumps(batch(evs=events([0])))[:-1] + b',"x":' + b'{"a":' * 2000 + b"0" + b"}" * 2000 + b"}"]
    for body in bodies:
        assert post(live, INGEST_PATH, JOB_AUTH, body).status == 400
    for body in [*bodies[:2], b'{"existing_last_output":' + b"[" * deep + b"]" * deep + b"}"]:
        assert post(live, FINALIZE_PATH.format(job_id=JOB), ADMIN_AUTH, body).status in (400, 404)
    assert stored_files(live) == []
    healthy(live)


def test_json_that_is_not_utf8_is_400(live: Live) -> None:
    good = orjson.dumps(batch(evs=[{"off": 0, "ts": 1.0, "line": "caf\u00e9 \u2603"}]))
    bodies = [
        good.replace("é".encode(), "é".encode("latin-1")),       # Latin-1
        good.decode().encode("utf-16"),                            # UTF-16 with BOM
        good.decode().encode("utf-32-le"),
        b"\xef\xbb\xbf" + good,                                    # UTF-8 BOM
        good.replace("é".encode(), b"\xc3\x28"),                  # invalid continuation
        good.replace("é".encode(), b"\xc0\xaf"),                  # overlong encoding of '/'
        good.replace("é".encode(), b"\xed\xa0\x80"),              # an encoded surrogate
        good.replace("é".encode(), b"\\ud800"),                   # an escaped lone surrogate
        good.replace("é".encode(), b"\xf4\x90\x80\x80"),          # beyond U+10FFFF
    ]
    for body in bodies:
        assert body != good
        assert post(live, INGEST_PATH, JOB_AUTH, body).status == 400, body[:80]
    assert post(live, INGEST_PATH, JOB_AUTH, good).status == 200
    assert len(stored_files(live)) == 1
    healthy(live)


BIG = 2**64 - 1


@pytest.mark.parametrize("field,raw,status", [
    ("seq", b"-1", 400), ("seq", b"0", 200), ("seq", str(2**63 - 1).encode(), 200), ("seq", str(BIG).encode(), 200),
    ("seq", str(BIG + 1).encode(), 400), ("seq", b"1e300", 400), ("seq", b"-0", 200), ("seq", b"1.0", 400),
    ("off", b"-1", 400), ("off", b"-9223372036854775809", 400), ("off", str(BIG).encode(), 200),
    ("off", str(BIG + 1).encode(), 400), ("off", b"1e400", 400), ("off", b"99999999999999999999999999999", 400),
    ("exit_code", b"-9223372036854775808", 200), ("exit_code", str(BIG).encode(), 200),
    ("exit_code", b"-9223372036854775809", 400), ("ts", b"1e308", 200), ("ts", b"-1e308", 200), ("ts", b"1e400", 400),
])
def test_negative_and_huge_numbers(live: Live, field: str, raw: bytes, status: int) -> None:
    body = batch(evs=[{"off": 7, "ts": 1.5, "line": "x"}], seq=3, eof=True)
    text = orjson.dumps(body)
    placeholder = b'"__N__"'
    if field in ("off", "ts"):
        text = text.replace(b'"%s":%s' % (field.encode(), b"7" if field == "off" else b"1.5"), b'"%s":%s' % (field.encode(), placeholder))
    else:
        text = text[:-1] + b',"%s":%s}' % (field.encode(), placeholder)
        if field == "seq":
            text = text.replace(b'"seq":3,', b"")
    assert text.count(placeholder) == 1
    answer = post(live, INGEST_PATH, JOB_AUTH, text.replace(placeholder, raw))
    assert answer.status == status, answer
    if status == 200:
        finalized = post(live, FINALIZE_PATH.format(job_id=JOB), ADMIN_AUTH, b"{}")
        assert finalized.status == 200, finalized
        steps = orjson.loads(finalized.body)["steps"]
        assert steps["running"]["lines"] == 1
    healthy(live)


# --- slow clients ------------------------------------------------------------------------------------

def _trickle(sock: socket.socket, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            sock.sendall(b" ")
        except OSError:
            return
        stop.wait(0.2)


#: Seconds within which the server must close a connection it gave up on.
CLOSE_WITHIN = 5.0


def test_a_slow_body_gets_408_and_frees_its_slot_and_connection(tmp_path: Path) -> None:
    with serve_in_thread(tmp_path, body_timeout=1.0, max_inflight_ingests=2, retry_after=4) as live:
        stop = threading.Event()
        socks = []
        trickler = None
        try:
            for i in range(2):
                s = socket.create_connection(("127.0.0.1", live.port), timeout=REQUEST_TIMEOUT)
                s.sendall(request("POST", INGEST_PATH, JOB_AUTH, b'{"job_id": ', content_length=100_000))
                socks.append(s)
                if i == 0:  # one trickles a byte every 0.2 s: that must not extend its deadline
                    trickler = threading.Thread(target=_trickle, args=(s, stop), daemon=True)
                    trickler.start()
            deadline = time.monotonic() + 5
            while "blast_logs_aggregator_ingests_in_flight 2.0" not in live.metrics_text():
                assert time.monotonic() < deadline, "the slow requests never started"
                time.sleep(0.02)
            # Both slots are held: a third batch is pushed back, with Retry-After.
            busy = post(live, INGEST_PATH, JOB_AUTH, batch(evs=events([0])))
            assert busy.status == 429 and busy.headers["retry-after"] == "4"
            for s in socks:
                answer = read_answer(s)
                assert answer is not None and answer.status == 408, answer
                assert orjson.loads(answer.body)["error"] == "timeout"
                assert answer.headers.get("connection", "").lower() == "close"
                s.settimeout(CLOSE_WITHIN)  # well below aiohttp's 10 s lingering read of an unread body
                try:
                    assert s.recv(1024) == b"", "the connection stayed open after 408"
                except ConnectionResetError:
                    pass
        finally:
            stop.set()
            for s in socks:
                s.close()
        if trickler is not None:
            trickler.join(5)
        assert post(live, INGEST_PATH, JOB_AUTH, batch(evs=events([0]))).status == 200
        healthy(live)


def test_slow_or_idle_connections_are_closed(tmp_path: Path) -> None:
    with serve_in_thread(tmp_path, idle_timeout=1.0) as live:
        stop = threading.Event()
        idle = socket.create_connection(("127.0.0.1", live.port), timeout=REQUEST_TIMEOUT)
        slow_headers = socket.create_connection(("127.0.0.1", live.port), timeout=REQUEST_TIMEOUT)
        slow_headers.sendall(b"POST /v1/ingest HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        trickler = threading.Thread(target=_trickle, args=(slow_headers, stop), daemon=True)
        trickler.start()
        try:
            for s in (idle, slow_headers):
                s.settimeout(CLOSE_WITHIN)
                try:
                    assert s.recv(1024) == b""  # closed by the server, within the socket timeout
                except ConnectionResetError:
                    pass
        finally:
            stop.set()
            idle.close()
            slow_headers.close()
            trickler.join(5)
        healthy(live)


# --- tokens ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,auth,status", [
    ("missing", None, 401),
    ("empty", "", 401),
    ("scheme only", "Bearer", 401),
    ("basic", "Basic " + job_token(TEST_SECRET, JOB), 401),
    ("no mac", f"Bearer {JOB}", 401),
    ("bad mac", f"Bearer {JOB}.{'A' * 43}", 401),
    ("truncated mac", f"Bearer {job_token(TEST_SECRET, JOB)[:-1]}", 401),
    ("other secret", f"Bearer {job_token('another-secret', JOB)}", 401),
    ("mac of another job", f"Bearer {JOB}.{job_token(TEST_SECRET, 'other-job').rsplit('.', 1)[1]}", 401),
    ("huge", "Bearer " + "A" * 7000, 401),
    ("non-ascii", "Bearer élb-123.ÄÖÜ", 401),
    ("two tokens", f"Bearer {job_token(TEST_SECRET, JOB)} {job_token(TEST_SECRET, JOB)}", 401),
    ("other job", f"Bearer {job_token(TEST_SECRET, 'other-job')}", 403),
    ("prefix job", f"Bearer {job_token(TEST_SECRET, JOB + '4')}", 403),
    ("admin in place of job", f"Bearer {TEST_ADMIN_TOKEN}", 403),
    ("own", f"Bearer {job_token(TEST_SECRET, JOB)}", 200),
])
def test_ingest_tokens(live: Live, name: str, auth: str | None, status: int) -> None:
    headers = {} if auth is None else {"Authorization": auth}
    answer = post(live, INGEST_PATH, headers, batch(evs=events([0])))
    assert answer.status == status, (name, answer)
    if status != 200:
        assert orjson.loads(answer.body)["error"] in ("unauthorized", "forbidden")
        assert stored_files(live) == []


@pytest.mark.parametrize("name,auth,status", [
    ("missing", None, 401),
    ("wrong admin", "Bearer not-the-admin-token", 401),
    ("admin prefix", f"Bearer {TEST_ADMIN_TOKEN[:-1]}", 401),
    ("own job token", f"Bearer {job_token(TEST_SECRET, JOB)}", 403),
    ("other job token", f"Bearer {job_token(TEST_SECRET, 'other-job')}", 403),
    ("admin", f"Bearer {TEST_ADMIN_TOKEN}", 200),
])
def test_finalize_tokens(live: Live, name: str, auth: str | None, status: int) -> None:
    assert post(live, INGEST_PATH, JOB_AUTH, batch(evs=events([0]), eof=True)).status == 200
    headers = {} if auth is None else {"Authorization": auth}
    answer = post(live, FINALIZE_PATH.format(job_id=JOB), headers, b"{}")
    assert answer.status == status, (name, answer)
    summary = live.store_root / JOB / "execution-steps" / "summary.json"
    assert summary.exists() == (status == 200)


# The secrets a check may compare, and what each check must decide with `hmac.compare_digest` alone.
CT_SECRET = "server-secret-for-the-constant-time-test"
CT_ADMIN = "admin-token-for-the-constant-time-test"


@pytest.fixture
def compare_digest_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bytes, bytes]]:
    """Record every `hmac.compare_digest` call (the real one still answers): the auth checks' ones."""
    real = hmac.compare_digest
    calls: list[tuple[bytes, bytes]] = []

    def recording(a: Any, b: Any) -> bool:
        calls.append((bytes(a), bytes(b)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording)
    return calls


def _outcome(check: Callable[[], object]) -> str:
    try:
        check()
    except Unauthorized:
        return "unauthorized"
    except Forbidden:
        return "forbidden"
    return "accepted"


def test_tokens_are_compared_in_constant_time(
        compare_digest_calls: list[tuple[bytes, bytes]], monkeypatch: pytest.MonkeyPatch) -> None:
    """Every secret a request presents reaches `hmac.compare_digest`, and its answer alone decides:
    forced to say "equal" it admits any token, forced to say "different" it refuses the right one,
    which would not happen if a secret were also compared with `==`, `!=` or `in`."""
    token = job_token(CT_SECRET, JOB)
    mac = token.rsplit(".", 1)[1].encode()
    forged = f"{JOB}.{'A' * 43}"

    # The real answers, and the secrets each check handed to compare_digest.
    assert token_job_id(CT_SECRET, token) == JOB and token_job_id(CT_SECRET, forged) is None
    assert any(mac in pair for pair in compare_digest_calls)
    compare_digest_calls.clear()
    assert check_ingest(f"Bearer {token}", CT_SECRET, CT_ADMIN) == JOB
    assert any(token.encode() in pair for pair in compare_digest_calls)  # against the admin token
    assert any(mac in pair for pair in compare_digest_calls)  # against the job's MAC
    compare_digest_calls.clear()
    assert check_admin(f"Bearer {CT_ADMIN}", CT_SECRET, CT_ADMIN) is None
    assert (CT_ADMIN.encode(), CT_ADMIN.encode()) in compare_digest_calls
    compare_digest_calls.clear()
    assert _outcome(lambda: check_admin(f"Bearer {forged}", CT_SECRET, CT_ADMIN)) == "unauthorized"
    assert any(forged.encode() in pair for pair in compare_digest_calls)
    assert any(b"A" * 43 in pair for pair in compare_digest_calls)

    # compare_digest decides: "equal" admits a forged token everywhere ...
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: True)
    assert token_job_id(CT_SECRET, forged) == JOB
    assert _outcome(lambda: check_ingest(f"Bearer {forged}", "x", "y")) == "forbidden"  # "the admin token"
    assert _outcome(lambda: check_admin(f"Bearer {forged}", CT_SECRET, CT_ADMIN)) == "accepted"
    # ... and "different" refuses the right ones.
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: False)
    assert token_job_id(CT_SECRET, token) is None
    assert _outcome(lambda: check_ingest(f"Bearer {token}", CT_SECRET, CT_ADMIN)) == "unauthorized"
    assert _outcome(lambda: check_admin(f"Bearer {CT_ADMIN}", CT_SECRET, CT_ADMIN)) == "unauthorized"


# --- a burst of 10,000 requests ---------------------------------------------------------------------

BURST = 10_000
BURST_CONCURRENCY = 48


async def _burst(url: str) -> tuple[set[tuple[str, int]], int, list[str]]:
    """POST BURST distinct one-event batches; the acknowledged (pod, off), the 429 count, their Retry-Afters."""
    acked: set[tuple[str, int]] = set()
    retry_afters: list[str] = []
    busy = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(BURST):
        queue.put_nowait(i)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=BURST_CONCURRENCY)) as session:
        async def worker() -> None:
            nonlocal busy
            while not queue.empty():
                i = queue.get_nowait()
                pod = f"burst-pod-{i % 16}"
                body = orjson.dumps(batch(pod=pod, seq=i, evs=[{"off": i, "ts": 1.0 + i, "line": f"burst line {i}"}]))
                async with session.post(url + INGEST_PATH, data=body, headers=JOB_AUTH) as r:
                    await r.read()
                    if r.status == 200:
                        acked.add((pod, i))
                    elif r.status == 429:
                        busy += 1
                        retry_afters.append(r.headers.get("Retry-After", ""))
                    else:
                        raise AssertionError(f"request {i}: {r.status} {await r.text()}")

        await asyncio.gather(*(worker() for _ in range(BURST_CONCURRENCY)))
    return acked, busy, retry_afters


@pytest.mark.slow
def test_a_burst_of_10000_requests_is_pushed_back_and_loses_nothing_acknowledged(
        start_aggregator: Any, tmp_path: Path) -> None:
    agg = start_aggregator(BLAST_LOGS_MAX_INFLIGHT_INGESTS="4", BLAST_LOGS_RETRY_AFTER="1")
    acked, busy, retry_afters = asyncio.run(_burst(agg.url))
    print(f"\nburst: {len(acked)} acknowledged, {busy} pushed back (429) of {BURST}; "
          f"aggregator peak RSS {_vm_hwm_kib(agg.proc.pid) / 1024:.0f} MiB")
    assert len(acked) + busy == BURST
    assert busy > 0, "no back-pressure at 48 concurrent clients against 4 ingest slots"
    assert acked, "nothing was accepted"
    assert all(ra.isdigit() and int(ra) >= 1 for ra in retry_afters), set(retry_afters)
    stored = staged_offs(tmp_path / "store")
    stored_pairs = {(pod, off) for (pod, _c), offs in stored.items() for off in offs}
    missing = acked - stored_pairs
    assert not missing, f"{len(missing)} acknowledged batches are not in storage, e.g. {sorted(missing)[:5]}"
    assert stored_pairs <= acked | {(f"burst-pod-{i % 16}", i) for i in range(BURST)}
    assert _vm_hwm_kib(agg.proc.pid) < 256 * 1024, "the aggregator's memory is not bounded under a burst"
    with urllib.request.urlopen(agg.url + "/metrics", timeout=10) as r:
        metrics = r.read().decode()
    assert 'status="500"' not in metrics
    assert f'route="/v1/ingest",status="429"}} {float(busy)}' in metrics
