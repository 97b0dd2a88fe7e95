"""The aggregator's log set-up: JSON lines, and azure-core's per-request records only at DEBUG."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import orjson
import pytest

from aggregator.logs import AZURE_HTTP_LOGGER, setup_logging


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    azure_http = logging.getLogger(AZURE_HTTP_LOGGER)
    handlers, level, azure_level = list(root.handlers), root.level, azure_http.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)
    azure_http.setLevel(azure_level)


@pytest.mark.parametrize("level", ["INFO", "WARNING"])
def test_azure_request_records_are_not_logged_above_debug(
        level: str, restore_logging: None, capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging(level)
    logging.getLogger(AZURE_HTTP_LOGGER).info("Request URL: 'http://127.0.0.1/acct/c/k'")
    logging.getLogger(AZURE_HTTP_LOGGER).warning("something is wrong")
    logging.getLogger("aggregator.app").warning("ours")
    lines = [orjson.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(d["logger"], d["msg"]) for d in lines] == [
        (AZURE_HTTP_LOGGER, "something is wrong"), ("aggregator.app", "ours")]


def test_azure_request_records_are_logged_at_debug(
        restore_logging: None, capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("DEBUG")
    logging.getLogger(AZURE_HTTP_LOGGER).info("Request URL: 'http://127.0.0.1/acct/c/k'")
    lines = [orjson.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [d["msg"] for d in lines] == ["Request URL: 'http://127.0.0.1/acct/c/k'"]
