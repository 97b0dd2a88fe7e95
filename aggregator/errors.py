"""Every error the aggregator raises, as one tree (httpx's model), and the one table of HTTP answers.

    AggregatorError
    ├── ConfigError              the configuration cannot run the service (also a ValueError)
    ├── RequestError             the request cannot be served as sent (4xx)
    │   ├── BadRequest           400 bad_request
    │   │   ├── BadBatch         400 bad_request: the body is not a valid batch
    │   │   └── UnsupportedEncoding  400 unsupported_encoding
    │   ├── AuthError            the credentials do not hold
    │   │   ├── Unauthorized     401 unauthorized
    │   │   └── Forbidden        403 forbidden
    │   ├── NotFound             404 not_found
    │   │   └── JobNotFound      404 not_found: nothing is staged for the job
    │   ├── MethodNotAllowed     405 method_not_allowed
    │   ├── BodyTimeout          408 timeout
    │   ├── TooLarge             413 too_large
    │   └── TooBusy              429 busy: too many ingests in flight
    └── Unavailable              503 unavailable: retry later
        ├── StoreError           503 storage_unavailable: storage is unreachable or failed
        │   └── BlobPutError     a direct Put Blob failed (wrapped by AzureStore)
        ├── LockBusy             503 busy: another finalize holds the job's lock
        └── Draining             503 draining: the replica is shutting down

Handlers raise; the app's error middleware renders `{"error": code, "detail": detail}` from
`HTTP_ANSWERS` (with `Retry-After` for the statuses in `RETRY_AFTER_STATUSES`), and `openapi.py`
documents each route's statuses from the same table.
"""

from __future__ import annotations

from typing import ClassVar, Final

import orjson
from aiohttp import web


class AggregatorError(Exception):
    """The root of every error the aggregator raises on purpose.

    The message is for logs; `detail` is what a client may be told: the message unless the class
    (whose messages name internals, like storage keys) or the raiser says otherwise.
    """

    #: A fixed client-facing detail for a class whose messages are internal; None: the message.
    public_detail: ClassVar[str | None] = None

    def __init__(self, message: str = "", *, detail: str | None = None) -> None:
        super().__init__(message)
        self._detail = detail

    @property
    def detail(self) -> str:
        if self._detail is not None:
            return self._detail
        return self.public_detail if self.public_detail is not None else str(self)


class ConfigError(AggregatorError, ValueError):
    """The configuration cannot run the service; the message says which variable and why."""


class RequestError(AggregatorError):
    """The request cannot be served as sent (a 4xx answer)."""


class BadRequest(RequestError):
    """Malformed request: bad JSON or gzip, a bad job id, a bad finalize body."""


class BadBatch(BadRequest):
    """The body is not a valid batch; the message says which field and why."""


class UnsupportedEncoding(BadRequest):
    """A Content-Encoding other than identity or gzip."""


class AuthError(RequestError):
    """A request's credentials do not hold."""


class Unauthorized(AuthError):
    """No token, a malformed Authorization header, or a token whose MAC does not hold."""


class Forbidden(AuthError):
    """A valid token of the wrong kind (admin on ingest, job on finalize) or for another job."""


class NotFound(RequestError):
    """Nothing there: an unknown route."""


class JobNotFound(NotFound):
    """Nothing is staged for the job."""


class MethodNotAllowed(RequestError):
    """The route does not take this method (aiohttp's own 405, rendered through the table)."""


class BodyTimeout(RequestError):
    """The request body did not arrive in time after its headers."""


class TooLarge(RequestError):
    """The body, or its inflated size, exceeds the limit."""


class TooBusy(RequestError):
    """Too many ingests in flight (back-pressure); the client retries after Retry-After."""


class Unavailable(AggregatorError):
    """The service cannot answer now; the client retries after Retry-After."""


class StoreError(Unavailable):
    """Storage is unreachable or failed. Its message names the operation and key: logs only."""

    public_detail = "storage is unavailable; retry later"


class BlobPutError(StoreError):
    """A Put Blob that failed: `status` and Azure's `code` when storage answered, else None."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class LockBusy(Unavailable):
    """Another replica held the job's finalize lock for longer than we may wait."""


class Draining(Unavailable):
    """The replica is shutting down: load balancers should stop sending work."""


#: The one table: the HTTP status and error code each error class answers with (subclasses inherit).
#: The first class listed for a status gives the code of the errors aiohttp raises itself (404, 405).
HTTP_ANSWERS: Final[dict[type[AggregatorError], tuple[int, str]]] = {
    BadRequest: (400, "bad_request"),
    UnsupportedEncoding: (400, "unsupported_encoding"),
    Unauthorized: (401, "unauthorized"),
    Forbidden: (403, "forbidden"),
    NotFound: (404, "not_found"),
    MethodNotAllowed: (405, "method_not_allowed"),
    BodyTimeout: (408, "timeout"),
    TooLarge: (413, "too_large"),
    TooBusy: (429, "busy"),
    Unavailable: (503, "unavailable"),
    StoreError: (503, "storage_unavailable"),
    LockBusy: (503, "busy"),
    Draining: (503, "draining"),
}
#: Answers with these statuses carry `Retry-After`.
RETRY_AFTER_STATUSES: Final = frozenset({429, 503})
_CODE_OF_STATUS: Final = {status: code for status, code in reversed(HTTP_ANSWERS.values())}


def http_answer(kind: type[AggregatorError]) -> tuple[int, str] | None:
    """The status and code for an error class (its nearest listed ancestor's); None: not an HTTP answer."""
    for cls in kind.__mro__:
        if cls in HTTP_ANSWERS:
            return HTTP_ANSWERS[cls]
    return None


def code_of_status(status: int) -> str:
    """The error code for a status aiohttp raised itself (an unknown route, a wrong method)."""
    return _CODE_OF_STATUS.get(status, "error")


def statuses(kinds: tuple[type[AggregatorError], ...]) -> tuple[int, ...]:
    """The sorted statuses a route raising `kinds` may answer (for the OpenAPI document)."""
    return tuple(sorted({answer[0] for kind in kinds if (answer := http_answer(kind)) is not None}))


def error_response(status: int, code: str, detail: str, *, retry_after: int | None = None) -> web.Response:
    """The service's one error shape: `{"error": code, "detail": ...}`, with `Retry-After` when given."""
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return web.Response(
        status=status,
        body=orjson.dumps({"error": code, "detail": detail}),
        content_type="application/json",
        headers=headers,
    )
