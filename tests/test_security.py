"""Bad input, authentication, resource limits, secrets in logs, and least privilege in the manifests.

Each test is named in docs/security.md next to the threat it answers. HTTP tests send raw bytes to
`make_app` on a real socket (tests/live_app.py) or to the real `blast-log-aggregator serve` process;
the secrets test also runs the real `blast-log-shipper run` against a real Azurite-backed aggregator.
"""

from __future__ import annotations

import ast
import asyncio
import gzip
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from agg_helpers import JOB, batch, events
from conftest import ROOT, TEST_ADMIN_TOKEN, TEST_SECRET, Azurite, azurite_binary, free_port
from live_app import REQUEST_TIMEOUT, Answer, Live, exchange, read_answer, request, serve_in_thread
from ruamel.yaml import YAML

from aggregator.auth import job_token
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


def test_tokens_are_compared_in_constant_time() -> None:
    """auth.py compares every secret with hmac.compare_digest, never with == or !=."""
    tree = ast.parse((ROOT / "aggregator" / "auth.py").read_text())
    secretish = ("token", "mac", "secret", "admin")

    def names(node: ast.AST) -> set[str]:
        return {n.id.lower() for n in ast.walk(node) if isinstance(n, ast.Name)} | {
            n.attr.lower() for n in ast.walk(node) if isinstance(n, ast.Attribute)}

    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(isinstance(op, ast.Eq | ast.NotEq | ast.In | ast.NotIn) for op in node.ops):
            operands = [node.left, *node.comparators]
            # Comparing against constants (scheme names, empty strings) is fine; two variables holding secrets is not.
            variables = [o for o in operands if not isinstance(o, ast.Constant)]
            if len(variables) >= 2:
                assert not any(w in n for o in variables for n in names(o) for w in secretish), ast.unparse(node)
    calls = {ast.unparse(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    assert "hmac.compare_digest" in calls
    same = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "_same")
    assert "hmac.compare_digest" in ast.unparse(same)
    for fn in ("token_job_id", "check_ingest", "check_admin"):
        body = ast.unparse(next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == fn))
        assert "_same(" in body, fn


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


# --- no secret in either program's logs or metrics ---------------------------------------------------

AGG_SECRET = "hmac-key-Zq8vR2xW9tLm4nB7"
AGG_ADMIN = "admin-tok-Kd93jf02LqpZ71xx"
SEC_JOB = "elb-secrets-1"
SEC_POD = "blastn-batch-secrets-abc12"


def _get(url: str, headers: dict[str, str] | None = None, data: bytes | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _shipper(volume: Path, url: str, token: str, metrics_port: int, log_path: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BLAST_LOGS_DIR": str(volume), "BLAST_LOGS_AGGREGATOR_URL": url,
           "BLAST_LOGS_TOKEN": token, "BLAST_LOGS_JOB_ID": SEC_JOB, "BLAST_LOGS_POD": SEC_POD,
           "BLAST_LOGS_NAMESPACE": "default", "BLAST_LOGS_PHASE": "running",
           "BLAST_LOGS_METRICS_PORT": str(metrics_port), "BLAST_LOGS_POLL_INTERVAL": "0.05",
           "BLAST_LOGS_LINGER": "0.05", "BLAST_LOGS_BACKOFF_BASE": "0.05", "BLAST_LOGS_BACKOFF_MAX": "0.3",
           "BLAST_LOGS_REJECT_BACKOFF": "0.3", "BLAST_LOGS_GRACE": "10", "BLAST_LOGS_LOG_LEVEL": "DEBUG"}
    with open(log_path, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "shipper", "run"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _wait(check: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return str(r.read().decode())
    except OSError:
        return ""


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.azure
@pytest.mark.slow
def test_no_secret_reaches_either_programs_logs_or_metrics(start_aggregator: Any, tmp_path: Path) -> None:
    binary = azurite_binary()
    if binary is None:
        pytest.skip("azurite-blob not installed")
    az = Azurite(binary=binary, port=free_port())  # our own, so stopping it disturbs no other test
    az.start()
    shippers: list[subprocess.Popen[bytes]] = []
    try:
        conn = az.connection_string
        account_key = conn.split("AccountKey=")[1].split(";")[0]
        agg = start_aggregator(f"azure://sec{os.getpid()}", BLAST_LOGS_AZURE_CONNECTION_STRING=conn,
                               BLAST_LOGS_SECRET=AGG_SECRET, BLAST_LOGS_ADMIN_TOKEN=AGG_ADMIN,
                               BLAST_LOGS_LOG_LEVEL="DEBUG", BLAST_LOGS_RETRY_AFTER="1")
        token = job_token(AGG_SECRET, SEC_JOB)
        wrong_token = f"{SEC_JOB}.{'Q' * 43}"
        other_job_token = job_token(AGG_SECRET, "elb-someone-else")
        secrets = {"secret": AGG_SECRET, "admin token": AGG_ADMIN, "job token": token,
                   "job token MAC": token.rsplit(".", 1)[1], "wrong token": wrong_token,
                   "other job's token": other_job_token, "connection string": conn, "account key": account_key,
                   "account key prefix": account_key[:16]}
        agg_metrics: list[str] = []
        shipper_metrics: list[str] = []

        # The aggregator, directly: every kind of credential failure, then a storage outage.
        body = orjson.dumps(batch(job_id=SEC_JOB, pod="direct-pod", evs=events([0])))
        for auth in (f"Bearer {token}", f"Bearer {wrong_token}", f"Bearer {AGG_ADMIN}", f"Bearer {other_job_token}",
                     f"Basic {AGG_SECRET}", f"Bearer {token}x", AGG_ADMIN):
            _get(agg.url + INGEST_PATH, {"Authorization": auth, "Content-Type": "application/json"}, body)
        for auth in (f"Bearer {token}", f"Bearer {AGG_ADMIN[:-1]}", f"Bearer {AGG_SECRET}"):
            _get(agg.url + FINALIZE_PATH.format(job_id=SEC_JOB), {"Authorization": auth}, b"{}")

        volume = tmp_path / "vol"
        (volume / "logs").mkdir(parents=True)
        log_file = volume / "logs" / "blast.log"
        log_file.write_text("starting blastn\n")
        shipper_log = tmp_path / "shipper.log"

        # A shipper with a wrong token: rejected (401), keeps its data, logs the failure.
        port_a = free_port()
        bad = _shipper(volume, agg.url, wrong_token, port_a, shipper_log)
        shippers.append(bad)
        _wait(lambda: b"401" in shipper_log.read_bytes() or "401" in _scrape(port_a), "a 401 seen by the shipper")
        shipper_metrics.append(_scrape(port_a))
        _stop(bad, signal.SIGKILL)
        for state in (volume / "state").glob("*"):  # let the good shipper start afresh
            state.unlink()

        # The real shipper with the right token, through a storage outage.
        port_b = free_port()
        good = _shipper(volume, agg.url, token, port_b, shipper_log)
        shippers.append(good)
        _wait(lambda: staged_count(agg.url) > 0, "the first batch stored")
        az.stop()
        with log_file.open("a") as f:
            f.write("Warning: [blastn] during the outage\n")
        _wait(lambda: _get(agg.url + "/readyz")[0] == 503, "readyz to notice the outage")
        time.sleep(1.0)  # the shipper meets 503s and retries
        agg_metrics.append(_get(agg.url + "/metrics")[1].decode())
        shipper_metrics.append(_scrape(port_b))
        _get(agg.url + FINALIZE_PATH.format(job_id=SEC_JOB), {"Authorization": f"Bearer {AGG_ADMIN}"}, b"{}")
        az.start()
        with log_file.open("a") as f:
            f.write("run end 7 0\n")
        (volume / "logs" / "blast.exit").write_text("0\n")
        _wait(lambda: _get(agg.url + "/readyz")[0] == 200, "readyz after the outage")
        shipper_metrics.append(_scrape(port_b))
        _stop(good)
        status, summary = _get(agg.url + FINALIZE_PATH.format(job_id=SEC_JOB),
                               {"Authorization": f"Bearer {AGG_ADMIN}"}, orjson.dumps({"wait_seconds": 5}))
        assert status == 200, summary
        assert "during the outage" in orjson.loads(summary)["steps"]["running"]["last_output"]
        agg_metrics.append(_get(agg.url + "/metrics")[1].decode())
        agg.stop()
        captured = {
            "aggregator log": agg.log_path.read_text(errors="replace"),
            "shipper log": shipper_log.read_text(errors="replace"),
            "aggregator metrics": "\n".join(agg_metrics),
            "shipper metrics": "\n".join(shipper_metrics),
        }
        assert "401" in captured["shipper log"] or "401" in captured["shipper metrics"]
        assert "storage" in captured["aggregator log"]  # the outage was logged ...
        leaks = [(what, where) for where, text in captured.items() for what, value in secrets.items() if value in text]
        assert not leaks, f"secrets found: {leaks}"  # ... but no secret with it
        for where in ("aggregator metrics", "shipper metrics"):
            assert captured[where].strip(), f"{where} were not captured"
    finally:
        for p in shippers:
            _stop(p, signal.SIGKILL)
        az.stop()


def staged_count(url: str) -> int:
    """Accepted batches according to the aggregator's own metrics."""
    _status, text = _get(url + "/metrics")
    for line in text.decode().splitlines():
        if line.startswith("blast_logs_aggregator_batches_total "):
            return int(float(line.split()[1]))
    return 0


# --- least privilege in the manifests ----------------------------------------------------------------

MANIFESTS = ROOT / "manifests"


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in YAML(typ="safe").load_all(path.read_text()) if d]


def _base() -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for p in sorted((MANIFESTS / "base").glob("*.yaml")) if p.name != "kustomization.yaml"
            for d in _docs(p)}


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


STORAGE_KEY_MARKERS = ("AccountKey", "SharedAccessSignature", "sig=", "CONNECTION_STRING", "SAS", "ACCOUNT_KEY")


def test_aggregator_reaches_storage_by_workload_identity_only() -> None:
    base = _base()
    pod = base["Deployment"]["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    env = _env(container)
    assert env["BLAST_LOGS_STORE"]["value"].startswith("azure://")
    assert env["BLAST_LOGS_AZURE_ACCOUNT_URL"]["value"].startswith("https://")
    assert not any(m in name for name in env for m in STORAGE_KEY_MARKERS), sorted(env)
    assert pod["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    sa = base["ServiceAccount"]
    assert pod["spec"]["serviceAccountName"] == sa["metadata"]["name"]
    assert "azure.workload.identity/client-id" in sa["metadata"]["annotations"]
    assert sa.get("automountServiceAccountToken") is False  # no Kubernetes API access either
    # Secrets come by reference only; no Secret object with a value is shipped.
    for name in ("BLAST_LOGS_SECRET", "BLAST_LOGS_ADMIN_TOKEN"):
        assert "secretKeyRef" in env[name]["valueFrom"] and "value" not in env[name]
    assert "Secret" not in base
    text = "\n".join(p.read_text() for p in MANIFESTS.rglob("*.yaml"))
    assert not any(m in text for m in ("AccountKey=", "SharedAccessSignature=", "sig=")), "a storage key in the manifests"


def _shipper_container() -> tuple[dict[str, Any], dict[str, Any]]:
    job = _docs(MANIFESTS / "examples" / "blast-job.yaml")[0]
    spec = job["spec"]["template"]["spec"]
    (sidecar,) = [c for c in spec["initContainers"] if c["name"] == "blast-logs-shipper"]
    return spec, sidecar


def test_the_injected_shipper_has_no_storage_access_and_only_its_token() -> None:
    _spec, sidecar = _shipper_container()
    env = _env(sidecar)
    assert not any(m in name for name in env for m in (*STORAGE_KEY_MARKERS, "AZURE", "STORE")), sorted(env)
    assert env["BLAST_LOGS_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "blast-logs-token", "key": "token",
                                                                    "optional": True}
    assert "value" not in env["BLAST_LOGS_TOKEN"]
    # Only the shared log volume is mounted: no storage credentials, no service account token volume.
    assert [m["name"] for m in sidecar["volumeMounts"]] == ["blast-logs"]
    assert sidecar.get("envFrom") is None
    assert sidecar["restartPolicy"] == "Always"


def _hardened(ctx: dict[str, Any], pod_ctx: dict[str, Any] | None = None) -> None:
    merged = {**(pod_ctx or {}), **ctx}
    assert merged.get("runAsNonRoot") is True
    assert int(merged.get("runAsUser", 0)) != 0
    assert ctx.get("readOnlyRootFilesystem") is True
    assert ctx.get("allowPrivilegeEscalation") is False
    assert ctx.get("capabilities", {}).get("drop") == ["ALL"]
    assert not ctx.get("privileged", False)
    assert merged.get("seccompProfile", {}).get("type") == "RuntimeDefault"


def test_both_programs_run_non_root_with_read_only_root_filesystems() -> None:
    pod = _base()["Deployment"]["spec"]["template"]["spec"]
    (aggregator,) = pod["containers"]
    _hardened(aggregator["securityContext"], pod.get("securityContext"))
    _, sidecar = _shipper_container()
    _hardened(sidecar["securityContext"])
    # The images agree: a numeric non-root USER.
    for dockerfile in ("Dockerfile.aggregator", "Dockerfile.shipper"):
        users = [ln.split()[1] for ln in (ROOT / dockerfile).read_text().splitlines() if ln.startswith("USER ")]
        assert users and users[-1].split(":")[0].isdigit() and users[-1].split(":")[0] != "0", (dockerfile, users)


def test_network_policy_admits_only_job_pods_and_the_job_api() -> None:
    base = _base()
    policy = base["NetworkPolicy"]["spec"]
    aggregator_labels = base["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert all(aggregator_labels.get(k) == v for k, v in policy["podSelector"]["matchLabels"].items())
    assert policy["policyTypes"] == ["Ingress"]
    (rule,) = policy["ingress"]
    assert [p["port"] for p in rule["ports"]] == ["http"]
    peers = rule["from"]
    assert len(peers) == 2
    for peer in peers:
        assert "ipBlock" not in peer
        selector = peer["podSelector"]
        assert selector, "an empty podSelector would admit every pod"
    job_pods = [p for p in peers if p["podSelector"].get("matchExpressions")]
    assert job_pods[0]["podSelector"]["matchExpressions"] == [{"key": "elb-job-id", "operator": "Exists"}]
    job_api = [p for p in peers if p["podSelector"].get("matchLabels")]
    assert job_api[0]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "elastic-blast-job-api"}
    # The example job's pods carry the label the policy admits.
    job = _docs(MANIFESTS / "examples" / "blast-job.yaml")[0]
    assert "elb-job-id" in job["spec"]["template"]["metadata"]["labels"]
