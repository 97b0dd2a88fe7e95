"""A request's body, read within its caps: plain or gzip, never holding more than the limits allow.

Limits are enforced before and while reading, so no body (plain, chunked or a gzip bomb) is ever held
beyond its cap. Both routes (ingest, finalize) read their bodies here.
"""

from __future__ import annotations

import zlib
from typing import Any

import orjson
from aiohttp import web

from aggregator.errors import BadRequest, TooLarge, UnsupportedEncoding

__all__ = ["json_object", "read_body"]

#: Deflate's worst case adds ~5 bytes per 16 KiB block plus headers; a gzip body of a batch that
#: inflates to at most the cap is never larger than the cap plus this.
GZIP_SLACK_BYTES = 4096
READ_CHUNK = 64 * 1024


class _Inflater:
    """Incremental gzip inflation (several members allowed) that refuses output beyond `cap` bytes."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.out = bytearray()
        self._d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)

    def feed(self, data: bytes) -> None:
        try:
            while data:
                if self._d.eof:
                    self._d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
                # max_length >= 1 always (0 would mean unlimited).
                self.out += self._d.decompress(data, self.cap + 1 - len(self.out))
                if len(self.out) > self.cap:
                    raise TooLarge(f"the inflated body exceeds {self.cap} bytes")
                data = self._d.unused_data if self._d.eof else self._d.unconsumed_tail
        except zlib.error as e:
            raise BadRequest(f"body is not valid gzip: {e}") from None

    def finish(self) -> bytes:
        if not self._d.eof:
            raise BadRequest("gzip body is truncated")
        return bytes(self.out)


async def read_body(request: web.Request, max_bytes: int) -> bytes:
    """The body, inflated when gzip, never holding more than the caps allow."""
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("identity", "", "gzip", "x-gzip"):
        raise UnsupportedEncoding(f"Content-Encoding {encoding!r}: only gzip is accepted")
    gzip = encoding in ("gzip", "x-gzip")
    raw_cap = max_bytes + GZIP_SLACK_BYTES if gzip else max_bytes
    length = request.content_length
    if length is not None and length > raw_cap:
        raise TooLarge(f"Content-Length {length} exceeds {raw_cap} bytes")
    inflater = _Inflater(max_bytes) if gzip else None
    buf = bytearray()
    received = 0
    while True:
        chunk = await request.content.read(READ_CHUNK)
        if not chunk:
            break
        received += len(chunk)
        if received > raw_cap:
            raise TooLarge(f"the body exceeds {raw_cap} bytes")
        if inflater is not None:
            inflater.feed(chunk)
        else:
            buf += chunk
    return inflater.finish() if inflater is not None else bytes(buf)


def json_object(body: bytes, error: type[BadRequest] = BadRequest) -> dict[str, Any]:
    """The body as a JSON object; `error` (a 400) when it is not valid UTF-8 JSON or not an object."""
    try:
        obj: Any = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise error(f"body is not valid UTF-8 JSON: {e}") from None
    if not isinstance(obj, dict):
        raise error("body must be a JSON object")
    return obj
