"""bench/sink.py counts the lines and bytes of the shipper's `dropped` reports from the batch header
(without parsing the events), so bench/bench_shipper.py's memory mode can check that events and
reported lines add up to the file's lines."""

from __future__ import annotations

import urllib.request
from typing import Any

import orjson
import pytest

from blastlogs.protocol import Dropped
from shipper.batch import Batch, Identity, encode_batch, encode_event

IDENT = Identity("bench", "bench-pod", "blast", "running")


def post(url: str, body: bytes | None = None) -> dict[str, Any]:
    req = urllib.request.Request(url, data=body, method="GET" if body is None else "POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        result: dict[str, Any] = orjson.loads(resp.read())
        return result


def body(drop: Dropped | None, lines: list[str], seq: int, *, eof: bool = False) -> bytes:
    b = Batch()
    for i, line in enumerate(lines):
        b.add(1000 * seq + i, encode_event(1000 * seq + i, 1.5, line))
    b.seal(drop, eof, 0 if eof else None)
    return encode_batch(IDENT, seq, b)


@pytest.mark.parametrize("live", [False, True], ids=["counted", "parsed"])
def test_dropped_reports_are_counted_from_the_header(bench_sink: str, live: bool) -> None:
    post(bench_sink + "/reset", b"")
    decoy = 'a line quoting a header: "dropped":{"lines":99,"bytes":99} "line":'
    first = "LIVE 1.0 x" if live else "plain"
    assert post(bench_sink + "/v1/ingest", body(None, [first, decoy], 1))["accepted"] == 2
    assert post(bench_sink + "/v1/ingest", body(Dropped(10, 7, 700), [decoy], 2))["accepted"] == 1
    assert post(bench_sink + "/v1/ingest", body(Dropped(900, 3, 30, exact=False), [], 3, eof=True))["accepted"] == 0
    stats = post(bench_sink + "/stats")
    assert (stats["events"], stats["dropped_lines"], stats["dropped_bytes"], stats["eof"]) == (3, 10, 730, 1)
