"""Nothing a client sent in a header or a path reaches the aggregator's log.

aiohttp logs a malformed request (a header holding a control character, a path holding `\\x7f`)
at ERROR with a traceback whose message quotes the raw request line or header, token included.
`ClientDataFilter`, installed on aiohttp's loggers, replaces any exception such a record carries
with its type name and HTTP status, and makes a client's malformed request a warning, not an
error of ours. The request log (`aggregator.app`) writes only values we chose: the route's
template, a known method name, the status, and a path's job id only when it is a valid id of a
request that succeeded.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Final

from aiohttp.http_exceptions import HttpProcessingError

from blastlogs.protocol import valid_job_id

#: aiohttp's loggers that may see a request (`aiohttp.access` is disabled: our middleware logs).
AIOHTTP_LOGGERS: Final = ("aiohttp.server", "aiohttp.web", "aiohttp.internal", "aiohttp.access")
#: Methods logged by name; any other (a client may send any token as its method) is logged as "other".
KNOWN_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})


class ClientDataFilter(logging.Filter):
    """Strips the exception (and its client-quoting message) from aiohttp's records, keeping its
    type and HTTP status as fields."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            fields: dict[str, object] = {"error": type(exc).__name__}
            if isinstance(exc, HttpProcessingError):
                fields["status"] = exc.code
                record.levelno, record.levelname = logging.WARNING, "WARNING"
                record.msg, record.args = "malformed HTTP request refused (the request is not logged)", None
            record.exc_info, record.exc_text, record.stack_info = None, None, None
            record.fields = fields  # both JSON formatters log a record's `fields` as fields
        record.args = _safe_args(record.args)
        return True


def _safe_args(args: tuple[object, ...] | Mapping[str, object] | None
               ) -> tuple[object, ...] | Mapping[str, object] | None:
    """aiohttp's message arguments are addresses and counts; a string with a control character
    is none of those, and is not logged."""
    if isinstance(args, tuple):
        return tuple("<withheld>" if isinstance(a, str) and not a.isprintable() else a for a in args)
    return args


def install() -> None:
    """Put `ClientDataFilter` on aiohttp's loggers (once)."""
    for name in AIOHTTP_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, ClientDataFilter) for f in logger.filters):
            logger.addFilter(ClientDataFilter())


def method_field(method: str) -> str:
    return method if method in KNOWN_METHODS else "other"


def job_id_field(job_id: str | None, status: int) -> str | None:
    """A path's job id as it may be logged: a valid id of a request that succeeded (so it names a
    job the token may act on and storage holds; a token pasted into the path gets a 401, 403 or
    404 and is not logged)."""
    if job_id is None or status >= 400 or not valid_job_id(job_id):
        return None
    return job_id
