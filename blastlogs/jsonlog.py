"""Structured logs for both programs: one JSON object per line, one set of field names.

`{"ts", "time", "level", "logger", "msg", ...fields, "exc"?}`: `ts` is Unix seconds (3 decimals),
`time` the same instant for people (UTC, ISO 8601, whole seconds), `level` is lower case. A record's fields are whatever the caller passed with `extra=` (each key its own
field), and the keys of an `extra={"fields": {...}}` mapping likewise, so either way of passing
them reads the same. Never log a token, a secret or a log line's content.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Final, TextIO

# Attributes every LogRecord has; anything else came in through `extra=` and is logged as a field.
_STANDARD: Final = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def record_fields(record: logging.LogRecord) -> dict[str, object]:
    """The fields a caller attached to `record` (`extra=`), `fields` mappings flattened."""
    out: dict[str, object] = {}
    for key, value in vars(record).items():
        if key in _STANDARD or key.startswith("_"):
            continue
        if key == "fields" and isinstance(value, dict):
            for k, v in value.items():
                out.setdefault(str(k), v)
        else:
            out[key] = value
    return out


class JsonFormatter(logging.Formatter):
    """A record as one compact JSON line (values JSON cannot hold are logged as `str(value)`)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": round(record.created, 3),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record_fields(record).items():
            out.setdefault(key, value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False, separators=(",", ":"))


def setup_logging(stream: TextIO, level: str | int = logging.INFO) -> logging.Handler:
    """Route every logger through one JSON handler on `stream`; returns the handler."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    return handler
