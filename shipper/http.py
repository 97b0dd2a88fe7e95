"""A small asyncio HTTP/1.1 client: the shipper's one kind of request is a POST of a batch with a small
JSON answer, and aiohttp's client cost every start ~0.3-0.45 s of CPU and ~24 MiB of RSS (it imports
`ssl` and much more) plus per-request overhead (docs/benchmarks.md, "Without aiohttp").

- Keep-alive connections per (scheme, host, port); a few idle ones are kept per origin (the shipper
  sends one batch at a time per stream, streams in parallel); idle ones older than `idle_timeout`
  are closed rather than reused.
- A request body goes with `Content-Length`; the answer is read by `Content-Length`, chunked
  transfer-encoding, or to the close. No `Accept-Encoding` is sent, so answers come unencoded.
- One total timeout per request (connecting, sending, the answer), and a bounded answer: at most
  `max_head` bytes of status line and headers (`ProtocolError` past that) and `max_body` bytes of
  body; a longer body is cut there (`Response.truncated`) and its connection closed, never read on.
- A stale keep-alive connection (the server closed it while idle) is retried once on a fresh one,
  but only when the failure came before any byte of the answer. The server may still have received
  the request, so this is safe only for idempotent requests; ingest is (an event is identified by
  its stream and offset, and the aggregator drops repeats).
- `https://` works, with `ssl.create_default_context()` unless a context is given. The context
  (loading the CA store: the costly part; asyncio imports the `ssl` module anyway) is made, and
  `ssl` imported here, only for the first https request. Proxies are not supported (the shipper talks to an in-cluster service);
  `HTTP(S)_PROXY` variables are ignored.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import ssl

DEFAULT_MAX_BODY: Final = 64 * 1024
DEFAULT_MAX_HEAD: Final = 64 * 1024
DEFAULT_IDLE_TIMEOUT: Final = 15.0
DEFAULT_MAX_IDLE: Final = 8
#: Requests in flight at once (each holds a connection, a descriptor): thousands of streams sending
#: their first batch together queue here instead of overflowing the server's backlog and `ulimit -n`.
DEFAULT_MAX_CONNECTIONS: Final = 32
USER_AGENT: Final = "blast-log-shipper"


class HttpError(Exception):
    """Anything that kept a request from getting an answer; the root of this module's exceptions."""


class InvalidURL(HttpError):
    pass


class ConnectError(HttpError):
    """No connection: refused, unreachable, name not resolved, TLS handshake failed."""


class ConnectionLost(HttpError):
    """The connection failed or was closed before the whole answer arrived."""


class ProtocolError(HttpError):
    """The answer is not HTTP/1.x as we read it (or its head is too long)."""


class RequestTimeout(HttpError):
    """The request's total timeout ran out."""


@dataclass(frozen=True)
class Response:
    status: int
    reason: str
    headers: dict[str, str]  # names lowercased; repeated headers joined with ", "
    body: bytes
    truncated: bool = False  # the body went on past `max_body` and was not read further

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


Origin = tuple[str, str, int]


class _Conn:
    __slots__ = ("idle_since", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0

    def usable(self, now: float, idle_timeout: float) -> bool:
        return (now - self.idle_since < idle_timeout and not self.reader.at_eof()
                and not self.writer.is_closing())

    def close(self) -> None:
        self.writer.close()


class _Stale(Exception):
    """A reused connection failed before any byte of the answer (internal: retried once)."""


class HttpClient:
    """Keep-alive HTTP/1.1 client; `close()` (or `async with`) closes its idle connections."""

    def __init__(self, *, max_body: int = DEFAULT_MAX_BODY, max_head: int = DEFAULT_MAX_HEAD,
                 idle_timeout: float = DEFAULT_IDLE_TIMEOUT, max_idle: int = DEFAULT_MAX_IDLE,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.max_body = max_body
        self.max_head = max_head
        self.idle_timeout = idle_timeout
        self.max_idle = max_idle
        self._ssl = ssl_context
        self._idle: dict[Origin, list[_Conn]] = {}
        self._slots = asyncio.Semaphore(max_connections)
        self.opened = 0  # connections made so far (keep-alive reuse shows as fewer)

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        conns = [c for idle in self._idle.values() for c in idle]
        self._idle.clear()
        for conn in conns:
            conn.close()
        for conn in conns:
            try:
                await asyncio.wait_for(conn.writer.wait_closed(), 1.0)
            except (OSError, TimeoutError):
                pass

    async def post(self, url: str, body: bytes, headers: dict[str, str], *,
                   timeout: float) -> Response:  # noqa: ASYNC109 (see `request`)
        return await self.request("POST", url, headers=headers, body=body, timeout=timeout)

    async def request(self, method: str, url: str, *, headers: dict[str, str] | None = None,
                      body: bytes = b"", timeout: float) -> Response:  # noqa: ASYNC109
        """One request and its answer; raises an `HttpError` when there is no (complete) answer.

        `timeout` bounds the whole request, a stale-connection retry included, and its expiry is
        raised as `RequestTimeout` like every other failure (so it is a parameter, not the caller's
        `asyncio.timeout`)."""
        origin, target, host_header = _parse_url(url)
        head = _request_head(method, target, host_header, headers or {}, len(body))
        async with self._slots:  # waiting for a slot is not the server's time: outside the timeout
            return await self._request(origin, method, head, body, timeout)

    async def _request(self, origin: Origin, method: str, head: bytes, body: bytes,
                       timeout: float) -> Response:  # noqa: ASYNC109 (see `request`)
        try:
            async with asyncio.timeout(timeout):
                conn, reused = await self._acquire(origin)
                try:
                    return await self._exchange(origin, conn, reused, method, head, body)
                except _Stale:
                    conn, _ = await self._acquire(origin, fresh=True)
                    return await self._exchange(origin, conn, False, method, head, body)
        except TimeoutError:
            raise RequestTimeout(f"no complete answer within {timeout:g} s") from None

    async def _acquire(self, origin: Origin, fresh: bool = False) -> tuple[_Conn, bool]:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle and not fresh:
            conn = idle.pop()
            if conn.usable(now, self.idle_timeout):
                return conn, True
            conn.close()
        scheme, host, port = origin
        ssl_arg: ssl.SSLContext | None = None
        if scheme == "https":
            ssl_arg = self._ssl_context()
        try:
            reader, writer = await asyncio.open_connection(
                host, port, ssl=ssl_arg, server_hostname=host if ssl_arg is not None else None,
                limit=self.max_head)
        except OSError as exc:  # ssl.SSLError is an OSError too
            raise ConnectError(f"cannot connect to {host}:{port}: {exc}") from exc
        self.opened += 1
        return _Conn(reader, writer), False

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            import ssl  # only for https: importing it costs start-up time and memory

            self._ssl = ssl.create_default_context()
        return self._ssl

    async def _exchange(self, origin: Origin, conn: _Conn, reused: bool, method: str, head: bytes,
                        body: bytes) -> Response:
        """Send and read on `conn`; it goes back to the pool only after a complete, reusable answer."""
        keep = False
        try:
            resp, keep = await self._send_and_read(conn, reused, method, head, body)
            return resp
        finally:
            if keep:
                self._release(origin, conn)
            else:
                conn.close()

    async def _send_and_read(self, conn: _Conn, reused: bool, method: str, head: bytes,
                             body: bytes) -> tuple[Response, bool]:
        reader, writer = conn.reader, conn.writer
        send_error: OSError | None = None
        try:
            # one write, so one segment and one wakeup of the server for a small answer's exchange
            writer.writelines((head, body) if body else (head,))
            await writer.drain()
        except OSError as exc:
            # The server may have answered (e.g. 413 by Content-Length) and closed before taking
            # the whole body: the answer, if any, is still in the reader's buffer.
            send_error = exc
        try:
            status_line = await reader.readuntil(b"\r\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                if reused:
                    raise _Stale("the idle connection was closed by the server") from None
                raise ConnectionLost(f"closed before an answer{_why(send_error)}") from None
            raise ConnectionLost("closed in the middle of the status line") from None
        except asyncio.LimitOverrunError:
            raise ProtocolError(f"status line longer than {self.max_head} bytes") from None
        except OSError as exc:
            if reused:
                raise _Stale(str(exc)) from None
            raise ConnectionLost(str(exc)) from exc
        while True:
            status, reason, version = _parse_status(status_line)
            headers = await self._read_headers(reader, len(status_line))
            if status >= 200 or status == 101:
                break
            status_line = await _read_line(reader, "status line")  # 1xx: an interim answer
        if send_error is not None:
            # Answered early; the rest of the body was not taken, so the connection is done.
            resp, _ = await self._read_body(reader, method, status, reason, headers)
            return resp, False
        resp, complete = await self._read_body(reader, method, status, reason, headers)
        connection = headers.get("connection", "").lower()
        if version == "HTTP/1.0":
            keep = "keep-alive" in connection
        else:
            keep = "close" not in connection
        return resp, keep and complete

    async def _read_headers(self, reader: asyncio.StreamReader, used: int) -> dict[str, str]:
        headers: dict[str, str] = {}
        budget = self.max_head - used
        while True:
            line = await _read_line(reader, "headers")
            budget -= len(line)
            if budget < 0:
                raise ProtocolError(f"answer head longer than {self.max_head} bytes")
            if line == b"\r\n":
                return headers
            name, sep, value = line.decode("latin-1").partition(":")
            if not sep or not name or name != name.strip():
                raise ProtocolError(f"malformed header line {line[:80]!r}")
            key = name.lower()
            value = value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value

    async def _read_body(self, reader: asyncio.StreamReader, method: str, status: int, reason: str,
                         headers: dict[str, str]) -> tuple[Response, bool]:
        """The body (at most `max_body` bytes) and whether the connection is at a clean end."""
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            return Response(status, reason, headers, b""), True
        te = headers.get("transfer-encoding")
        if te is not None:
            if te.lower().rsplit(",", 1)[-1].strip() != "chunked":
                raise ProtocolError(f"unsupported Transfer-Encoding {te!r}")
            return await self._read_chunked(reader, status, reason, headers)
        length_text = headers.get("content-length")
        if length_text is not None:
            values = {v.strip() for v in length_text.split(",")}
            if len(values) != 1 or not (length := values.pop()).isdigit():
                raise ProtocolError(f"bad Content-Length {length_text!r}")
            n = int(length)
            take = min(n, self.max_body)
            try:
                body = await reader.readexactly(take)
            except asyncio.IncompleteReadError:
                raise ConnectionLost("closed in the middle of the body") from None
            except OSError as exc:
                raise ConnectionLost(str(exc)) from exc
            return Response(status, reason, headers, body, truncated=n > take), n == take
        # Neither: the body runs to the close.
        try:
            body = await reader.read(self.max_body + 1)
            while len(body) <= self.max_body and (more := await reader.read(self.max_body + 1 - len(body))):
                body += more
        except OSError as exc:
            raise ConnectionLost(str(exc)) from exc
        truncated = len(body) > self.max_body
        return Response(status, reason, headers, body[:self.max_body], truncated=truncated), False

    async def _read_chunked(self, reader: asyncio.StreamReader, status: int, reason: str,
                            headers: dict[str, str]) -> tuple[Response, bool]:
        parts: list[bytes] = []
        got = 0
        try:
            while True:
                size_line = await _read_line(reader, "chunk size")
                size_text = size_line.split(b";", 1)[0].strip()
                try:
                    size = int(size_text, 16)
                except ValueError:
                    raise ProtocolError(f"bad chunk size {size_line[:40]!r}") from None
                if size == 0:
                    while await _read_line(reader, "trailers") != b"\r\n":
                        pass
                    return Response(status, reason, headers, b"".join(parts)), True
                if got + size > self.max_body:
                    parts.append(await reader.readexactly(self.max_body - got))
                    return Response(status, reason, headers, b"".join(parts), truncated=True), False
                parts.append(await reader.readexactly(size))
                got += size
                if await reader.readexactly(2) != b"\r\n":
                    raise ProtocolError("chunk not followed by CRLF")
        except asyncio.IncompleteReadError:
            raise ConnectionLost("closed in the middle of a chunked body") from None
        except OSError as exc:
            raise ConnectionLost(str(exc)) from exc

    def _release(self, origin: Origin, conn: _Conn) -> None:
        idle = self._idle.setdefault(origin, [])
        if len(idle) >= self.max_idle:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        idle.append(conn)


async def _read_line(reader: asyncio.StreamReader, what: str) -> bytes:
    try:
        return await reader.readuntil(b"\r\n")
    except asyncio.IncompleteReadError:
        raise ConnectionLost(f"closed in the middle of the {what}") from None
    except asyncio.LimitOverrunError:
        raise ProtocolError(f"{what}: line too long") from None
    except OSError as exc:
        raise ConnectionLost(str(exc)) from exc


def _parse_status(line: bytes) -> tuple[int, str, str]:
    parts = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
    if len(parts) < 2 or parts[0] not in ("HTTP/1.1", "HTTP/1.0") or not (
            len(parts[1]) == 3 and parts[1].isdigit()):
        raise ProtocolError(f"not an HTTP/1.x status line: {line[:80]!r}")
    return int(parts[1]), parts[2] if len(parts) > 2 else "", parts[0]


def _parse_url(url: str) -> tuple[Origin, str, str]:
    """The origin, the request target (path and query) and the Host header of an http(s) URL."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidURL(f"{url!r}: {exc}") from None
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in ("http", "https") or not host:
        raise InvalidURL(f"{url!r}: not an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise InvalidURL(f"{url!r}: credentials in URLs are not supported")
    default = 443 if scheme == "https" else 80
    port = default if port is None else port
    shown = f"[{host}]" if ":" in host else host
    host_header = shown if port == default else f"{shown}:{port}"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return (scheme, host, port), target, host_header


def _request_head(method: str, target: str, host: str, headers: dict[str, str], length: int) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", f"User-Agent: {USER_AGENT}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if length or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {length}")
    for k, v in headers.items():
        if any(c in k or c in v for c in "\r\n\0"):
            raise HttpError(f"header {k!r}: line breaks or NUL in a name or value")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _why(exc: OSError | None) -> str:
    return f" (sending: {exc})" if exc is not None else ""
