"""Both programs log through `blastlogs.jsonlog`: the same field names, `time` for people beside `ts`."""

from __future__ import annotations

import calendar
import logging
import time
from collections.abc import Iterator

import orjson
import pytest

from aggregator.logs import setup_logging as aggregator_logging
from shipper.cli import setup_logging as shipper_logging


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_both_programs_write_the_same_fields(
        restore_logging: None, capsys: pytest.CaptureFixture[str]) -> None:
    shipper_logging()
    logging.getLogger("shipper.t").warning("from the shipper", extra={"fields": {"n": 1}})
    aggregator_logging("INFO")
    logging.getLogger("aggregator.t").warning("from the aggregator", extra={"fields": {"n": 2}})
    out, err = capsys.readouterr()
    shipper_doc, aggregator_doc = orjson.loads(out), orjson.loads(err)
    assert list(shipper_doc) == list(aggregator_doc) == ["ts", "time", "level", "logger", "msg", "n"]
    for doc in (shipper_doc, aggregator_doc):
        stamp = calendar.timegm(time.strptime(doc["time"], "%Y-%m-%dT%H:%M:%SZ"))
        assert stamp == int(doc["ts"]) and doc["level"] == "warning"
