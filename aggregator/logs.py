"""Structured logs: one JSON object per line on stderr.

Callers pass fields with `extra={"fields": {...}}`. Never pass a token, the secret or a connection
string; request logs carry method, route, status and duration only, never headers.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

#: azure-core's HttpLoggingPolicy logs every storage request and response, headers included, at
#: INFO: two multi-line records per ingested batch. They are shown only at DEBUG.
AZURE_HTTP_LOGGER = "azure.core.pipeline.policies.http_logging_policy"


class JsonFormatter(logging.Formatter):
    """`{"ts", "level", "logger", "msg", ...fields, "exc"?}` as one line."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": round(record.created, 3),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for k, v in fields.items():
                doc.setdefault(str(k), v)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


def setup_logging(level: str | int = logging.INFO) -> None:
    """Route every logger (aiohttp's included) through one JSON handler on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    azure_http = logging.getLogger(AZURE_HTTP_LOGGER)
    azure_http.setLevel(logging.NOTSET if root.level <= logging.DEBUG else max(root.level, logging.WARNING))
    # Our middleware logs each request as JSON; aiohttp's access log would duplicate it as text.
    logging.getLogger("aiohttp.access").disabled = True
