"""`make_app` on a real loopback socket, served from a background thread, and raw HTTP/1.1 exchanges.

Raw bytes (not a client library) so tests can send what clients would refuse to: any path, header,
framing, or a body trickled slowly. Every exchange is bounded by a socket timeout: a hang is a failure.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agg_helpers import make_config
from aiohttp import web
from conftest import free_port

from aggregator.app import METRICS, make_app

#: Any single exchange answering later than this is a hang.
REQUEST_TIMEOUT = 10.0


class ErrorRecords(logging.Handler):
    """Collects the app's ERROR records (an unhandled exception is logged at ERROR)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class Live:
    """The app on 127.0.0.1:port, served by its own event loop in a thread; its store under `root/store`."""

    port: int
    app: web.Application
    root: Path
    store_root: Path
    errors: ErrorRecords
    statuses: list[int] = field(default_factory=list)

    def metrics_text(self) -> str:
        return self.app[METRICS].render()[0].decode()


@contextmanager
def serve_in_thread(root: Path, **overrides: Any) -> Iterator[Live]:
    """Serve make_app(make_config(**overrides)) over a local store at `root/store` until the block ends."""
    store_root = root / "store"
    app = make_app(make_config(store_url=f"file://{store_root}", **overrides))
    errors = ErrorRecords()
    logging.getLogger("aggregator").addHandler(errors)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, access_log=None)
    port = free_port()
    started = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, name="live-aggregator", daemon=True)
    thread.start()
    assert started.wait(20), "the app did not start"
    try:
        yield Live(port, app, root, store_root, errors)
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        logging.getLogger("aggregator").removeHandler(errors)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def read_answer(s: socket.socket, timeout: float = REQUEST_TIMEOUT, what: bytes = b"") -> Answer | None:
    """The first HTTP answer on `s`, or None when the server closed without one; TimeoutError on a hang."""
    s.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no complete answer within {timeout}s to {what[:200]!r}")
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            chunk = b""
        data += chunk
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            headers = {}
            for line in lines[1:]:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            length = headers.get("content-length")
            if length is not None and len(body) >= int(length):
                return Answer(status, headers, body[: int(length)])
            if not chunk:
                return Answer(status, headers, body)
        elif not chunk:
            return None


def exchange(port: int, raw: bytes, timeout: float = REQUEST_TIMEOUT) -> Answer | None:
    """Send raw request bytes on a new connection; the parsed answer (None: closed without one)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(raw)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may refuse early (413) and close while we still send
        return read_answer(s, timeout, raw)


def request(method: str, path: str, headers: dict[str, str], body: bytes = b"", *,
            content_length: int | None = None) -> bytes:
    """An HTTP/1.1 request with arbitrary path and header values; Content-Length is right unless given."""
    length = len(body) if content_length is None else content_length
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close", f"Content-Length: {length}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return "\r\n".join(lines).encode("utf-8", "surrogateescape") + b"\r\n\r\n" + body
