"""The service's one error shape: `{"error": code, "detail": ...}`, with `Retry-After` for 429/503."""

from __future__ import annotations

import orjson
from aiohttp import web


class ApiError(Exception):
    """An answer other than success, raised anywhere in a handler and rendered by the error middleware."""

    def __init__(self, status: int, code: str, detail: str, *, retry_after: int | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.retry_after = retry_after


def error_response(status: int, code: str, detail: str, *, retry_after: int | None = None) -> web.Response:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return web.Response(
        status=status,
        body=orjson.dumps({"error": code, "detail": detail}),
        content_type="application/json",
        headers=headers,
    )
