"""The shipper's own HTTP client (shipper/http.py) and metrics server against real servers, and that
the shipper no longer imports aiohttp."""

from __future__ import annotations

import asyncio
import datetime
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from conftest import ROOT, free_port
from shipper_helpers import TOKEN, Recorder, eventually, shipping

from shipper.http import (
    ConnectError,
    ConnectionLost,
    HttpClient,
    HttpError,
    InvalidURL,
    ProtocolError,
    RequestTimeout,
)
from shipper.metrics import ShipperMetrics, start_server

BODY = orjson.dumps({"job_id": "elb-test-1", "pod": "p", "container": "c", "phase": "running", "seq": 0,
                     "eof": False, "dropped": {"lines": 0, "bytes": 0}, "events": []})
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}


def test_the_shipper_does_not_import_aiohttp() -> None:
    code = "import shipper.cli, shipper.runner, sys; print(sorted(m for m in sys.modules if 'aiohttp' in m))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         check=True)
    assert out.stdout.strip() == "[]"


async def test_keep_alive_connection_is_reused(recorder: Recorder) -> None:
    async with HttpClient() as http:
        for _ in range(5):
            resp = await http.post(recorder.url + "/v1/ingest", BODY, AUTH, timeout=5)
            assert resp.status == 200 and orjson.loads(resp.body) == {"accepted": 0, "duplicate": False}
        assert http.opened == 1
        # Parallel requests (streams) each get a connection; afterwards they are idle and reused.
        answers = await asyncio.gather(*(http.post(recorder.url + "/v1/ingest", BODY, AUTH, timeout=5)
                                         for _ in range(4)))
        assert [r.status for r in answers] == [200] * 4 and http.opened == 4
        await http.post(recorder.url + "/v1/ingest", BODY, AUTH, timeout=5)
        assert http.opened == 4
    assert len(recorder.accepted) == 10


async def test_error_answers_keep_status_headers_and_body(recorder: Recorder) -> None:
    recorder.script = [503, 401]
    recorder.retry_after = "7"
    async with HttpClient() as http:
        busy = await http.post(recorder.url + "/v1/ingest", BODY, AUTH, timeout=5)
        assert busy.status == 503 and busy.header("Retry-After") == "7" and not busy.truncated
        assert orjson.loads(busy.body) == {"error": "e503", "detail": "told to fail"}
        denied = await http.post(recorder.url + "/v1/ingest", BODY, AUTH, timeout=5)
        assert denied.status == 401 and http.opened == 1


async def test_dropped_connection_is_an_error_not_retried_when_fresh(recorder: Recorder) -> None:
    recorder.script = ["drop"]
    async with HttpClient() as http:
        with pytest.raises(ConnectionLost):
            await http.post(recorder.url + "/v1/ingest", BODY, AUTH, timeout=5)
        assert len(recorder.requests) == 1
        assert (await http.post(recorder.url + "/v1/ingest", BODY, AUTH, timeout=5)).status == 200


async def test_connect_errors_and_bad_urls(recorder: Recorder) -> None:
    async with HttpClient() as http:
        with pytest.raises(ConnectError):
            await http.post(f"http://127.0.0.1:{free_port()}/v1/ingest", BODY, AUTH, timeout=5)
        for bad in ("ftp://x/", "http:///nohost", "http://h:99999/", "http://u:p@h/"):
            with pytest.raises(InvalidURL):
                await http.post(bad, BODY, AUTH, timeout=5)
        with pytest.raises(HttpError):
            await http.post(recorder.url + "/v1/ingest", BODY, {"X-Evil": "a\r\nInjected: 1"}, timeout=5)
    assert issubclass(RequestTimeout, HttpError) and issubclass(ProtocolError, HttpError)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def app_server() -> AsyncIterator[Callable[..., Awaitable[str]]]:
    """Start a real aiohttp server with the given routes (and handler args); yields its URL."""
    runners: list[web.AppRunner] = []

    async def start(routes: dict[str, Handler], **handler_args: Any) -> str:
        app = web.Application(client_max_size=16 * 1024 * 1024, handler_args=handler_args or None)
        for path, handler in routes.items():
            app.router.add_route("*", path, handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield start
    for runner in runners:
        await runner.cleanup()


async def test_server_closing_idle_connections(app_server: Any) -> None:
    peers: list[int] = []

    async def peer(request: web.Request) -> web.Response:
        assert request.transport is not None
        peers.append(request.transport.get_extra_info("peername")[1])
        await request.read()
        return web.json_response({"ok": True})

    url = await app_server({"/peer": peer}, keepalive_timeout=0.2)
    async with HttpClient() as http:
        await http.post(url + "/peer", BODY, AUTH, timeout=5)
        await http.post(url + "/peer", BODY, AUTH, timeout=5)
        await asyncio.sleep(0.6)  # the server closes the idle connection
        assert (await http.post(url + "/peer", BODY, AUTH, timeout=5)).status == 200
    assert peers[0] == peers[1] != peers[2] and http.opened == 2


async def test_client_drops_connections_idle_too_long(app_server: Any) -> None:
    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    url = await app_server({"/ok": ok})
    async with HttpClient(idle_timeout=0.1) as http:
        await http.post(url + "/ok", BODY, AUTH, timeout=5)
        await asyncio.sleep(0.2)
        await http.post(url + "/ok", BODY, AUTH, timeout=5)
        assert http.opened == 2


async def test_stale_connection_is_retried_once_on_a_fresh_one() -> None:
    """A server that answers the first request of each connection and drops the second unanswered
    (as if it closed the idle connection just as the request went out)."""
    seen: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        n = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                seen.append(n)
                n += 1
                if n == 2:
                    break
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/x"
    try:
        async with HttpClient() as http:
            assert (await http.post(url, BODY, AUTH, timeout=5)).body == b"ok"
            # Reused, dropped unanswered, retried on a fresh connection which answers.
            assert (await http.post(url, BODY, AUTH, timeout=5)).body == b"ok"
            assert seen == [0, 1, 0] and http.opened == 2
    finally:
        server.close()
        await server.wait_closed()


async def test_chunked_answers(app_server: Any) -> None:
    async def chunked(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(status=int(request.query.get("status", "200")))
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for part in (b'{"a":', b' "' + b"x" * int(request.query.get("n", "10")) + b'"', b"}"):
            await resp.write(part)
        await resp.write_eof()
        return resp

    url = await app_server({"/chunked": chunked})
    async with HttpClient(max_body=1000) as http:
        resp = await http.post(url + "/chunked?status=503", BODY, AUTH, timeout=5)
        assert resp.status == 503 and orjson.loads(resp.body) == {"a": "x" * 10} and not resp.truncated
        assert resp.header("transfer-encoding") == "chunked"
        again = await http.post(url + "/chunked", BODY, AUTH, timeout=5)
        assert again.status == 200 and http.opened == 1
        big = await http.post(url + "/chunked?n=5000", BODY, AUTH, timeout=5)
        assert big.truncated and len(big.body) == 1000 and big.body.startswith(b'{"a": "xxx')
        await http.post(url + "/chunked", BODY, AUTH, timeout=5)
        assert http.opened == 2  # the cut-off connection was closed, not reused


async def test_oversized_body_is_cut_and_never_read_on(app_server: Any) -> None:
    sent: list[bool] = []

    async def huge(request: web.Request) -> web.Response:
        sent.append(True)
        return web.Response(status=500, body=b"e" * (8 * 1024 * 1024))

    url = await app_server({"/huge": huge})
    async with HttpClient(max_body=4096) as http:
        resp = await http.post(url + "/huge", BODY, AUTH, timeout=5)
        assert resp.status == 500 and resp.truncated and resp.body == b"e" * 4096
        assert resp.header("content-length") == str(8 * 1024 * 1024)
        assert http.opened == 1 and not http._idle.get(("http", "127.0.0.1", int(url.rsplit(":", 1)[1])))


async def test_early_answer_before_the_body_is_taken(app_server: Any) -> None:
    """413 by Content-Length, as the aggregator answers, without reading an 8 MiB body."""
    async def too_large(request: web.Request) -> web.Response:
        return web.json_response({"error": "too_large"}, status=413)

    url = await app_server({"/in": too_large}, lingering_time=2.0)  # shorter teardown
    async with HttpClient() as http:
        resp = await http.post(url + "/in", b"x" * (8 * 1024 * 1024), AUTH, timeout=10)
        assert resp.status == 413 and orjson.loads(resp.body) == {"error": "too_large"}


async def test_total_timeout(app_server: Any) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query["s"]))
        return web.json_response({"ok": True})

    url = await app_server({"/slow": slow})
    async with HttpClient() as http:
        with pytest.raises(RequestTimeout):
            await http.post(url + "/slow?s=3", BODY, AUTH, timeout=0.3)
        assert (await http.post(url + "/slow?s=0", BODY, AUTH, timeout=5)).status == 200
        assert http.opened == 2  # the timed-out connection was closed


async def test_malformed_answers_are_protocol_errors() -> None:
    answers = [b"SMTP ready\r\n\r\n", b"HTTP/1.1 200 OK\r\n" + b"X: " + b"y" * 70_000 + b"\r\n\r\n",
               b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n",
               b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"]

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answers.pop(0))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/x"
    try:
        async with HttpClient() as http:
            for _ in range(4):
                with pytest.raises(ProtocolError):
                    await http.request("GET", url, timeout=5)
    finally:
        server.close()
        await server.wait_closed()


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    pytest.importorskip("cryptography")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


async def test_https_against_a_self_signed_server(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"tls": request.secure, "len": len(await request.read())})

    app = web.Application()
    app.router.add_post("/in", ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx).start()
    url = f"https://localhost:{runner.addresses[0][1]}/in"
    try:
        trusting = ssl.create_default_context(cafile=str(cert))
        async with HttpClient(ssl_context=trusting) as http:
            for _ in range(3):
                resp = await http.post(url, BODY, AUTH, timeout=5)
                assert orjson.loads(resp.body) == {"tls": True, "len": len(BODY)}
            assert http.opened == 1
        async with HttpClient() as default:  # ssl.create_default_context(): the cert is not trusted
            with pytest.raises(ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await default.post(url, BODY, AUTH, timeout=5)
    finally:
        await runner.cleanup()


@pytest.fixture
async def metrics_server() -> AsyncIterator[tuple[str, int, ShipperMetrics]]:
    metrics = ShipperMetrics()
    metrics.lines_read.labels(container="blast").inc(3)
    server = await start_server(metrics, "127.0.0.1", free_port(), lambda: {"streams": 2})
    assert server is not None
    port = server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", port, metrics
    server.close()
    await server.wait_closed()


async def _raw(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        writer.write_eof()
        return await asyncio.wait_for(reader.read(), 5)  # to the server's close
    except ConnectionResetError:  # closed with our request unread
        return b""
    finally:
        writer.close()


async def test_metrics_server_answers_get_and_head(metrics_server: Any) -> None:
    url, port, _ = metrics_server
    async with HttpClient() as http:
        resp = await http.request("GET", url + "/metrics", timeout=5)
        assert resp.status == 200 and (resp.header("content-type") or "").startswith("text/plain")
        assert b'blast_logs_shipper_lines_read_total{container="blast"} 3.0' in resp.body
        health = await http.request("GET", url + "/healthz?x=1", timeout=5)
        assert orjson.loads(health.body) == {"status": "ok", "streams": 2}
        head = await http.request("HEAD", url + "/healthz", timeout=5)
        assert head.status == 200 and head.body == b"" and int(head.header("content-length") or 0) > 0
        assert (await http.request("GET", url + "/nope", timeout=5)).status == 404
        post = await http.request("POST", url + "/metrics", body=b"x", timeout=5)
        assert post.status == 405 and post.header("allow") == "GET, HEAD"
        assert http.opened == 5  # Connection: close every time
    assert (await _raw(port, b"GET /healthz HTTP/1.0\r\n\r\n")).startswith(b"HTTP/1.1 200 OK\r\n")


async def test_metrics_server_closes_on_malformed_or_oversized_requests(metrics_server: Any) -> None:
    _, port, _ = metrics_server
    assert (await _raw(port, b"hello there\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
    assert await _raw(port, b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20_000 + b"\r\n\r\n") == b""
    assert await _raw(port, b"GET /metr") == b""  # half a request, then the client's FIN


async def test_the_shipper_ships_over_https(tmp_path: Path, volume: Path) -> None:
    """The real shipper process: the default context, trusting the test CA through SSL_CERT_FILE."""
    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    rec = await Recorder(ssl_context=server_ctx).start()
    (volume / "logs" / "blast.log").write_bytes(b"over tls\n")
    try:
        async with shipping(volume, [rec.url], SSL_CERT_FILE=str(cert)) as shipper:
            await eventually(lambda: rec.lines("blast") == ["over tls"], what="the line over https")
            await shipper.started()
            assert await shipper.stop() == 0 and rec.eof("blast")
    finally:
        await rec.stop()
