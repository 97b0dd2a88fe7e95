"""The aggregator's log set-up: `blastlogs.jsonlog` lines on stderr, quieter third-party loggers.

Callers pass fields with `extra={"fields": {...}}`. Never pass a token, the secret or a connection
string; request logs carry method, route, status and duration only, never headers.
"""

from __future__ import annotations

import logging
import sys

from blastlogs import jsonlog

#: azure-core's HttpLoggingPolicy logs every storage request and response, headers included, at
#: INFO: two multi-line records per ingested batch. They are shown only at DEBUG.
AZURE_HTTP_LOGGER = "azure.core.pipeline.policies.http_logging_policy"


def setup_logging(level: str | int = logging.INFO) -> None:
    """Route every logger (aiohttp's included) through one JSON handler on stderr."""
    jsonlog.setup_logging(sys.stderr, level)
    root = logging.getLogger()
    azure_http = logging.getLogger(AZURE_HTTP_LOGGER)
    azure_http.setLevel(logging.NOTSET if root.level <= logging.DEBUG else max(root.level, logging.WARNING))
    # Our middleware logs each request as JSON; aiohttp's access log would duplicate it as text.
    logging.getLogger("aiohttp.access").disabled = True
