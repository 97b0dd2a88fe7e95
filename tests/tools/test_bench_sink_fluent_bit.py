"""bench/sink.py counts Fluent Bit's http output (`Format json`) as bench/bench_shipper.py needs:
one event per record, without parsing, and the lag of `LIVE <ts>` lines when it parses.

The bodies are what Fluent Bit 5.1.1 (tail without parser -> http, Format json) sent for lines with
quotes, a backslash, invalid UTF-8 (it replaces the bytes), ANSI escapes and non-ASCII text.
"""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

#: as captured from Fluent Bit (two records per line of this literal, bytes kept as sent)
FLUENT_BIT_BODY = (
    b'[{"date":1796639237.129102,"log":"hello \\"world\\" \\\\ back"},'
    b'{"date":1796639237.129106,"log":"second line \xee\x83\xbf\xee\x83\xbe invalid"},'
    b'{"date":1796639237.12911,"log":"\\u001b[31mred\\u001b[0m \\u00e9"},'
    b'{"date":1796639237.12912,"log":"a line quoting a record: {\\"log\\": \\"x\\"}"}]'
)


def call(url: str, body: bytes | None = None) -> dict[str, Any]:
    req = urllib.request.Request(url, data=body, method="GET" if body is None else "POST",
                                 headers={"Content-Type": "application/json", "User-Agent": "Fluent-Bit"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        result: dict[str, Any] = json.loads(resp.read())
        return result


def test_fluent_bit_records_are_counted_one_each_without_parsing(bench_sink: str) -> None:
    call(bench_sink + "/reset", b"")
    assert call(bench_sink + "/fluent-bit", FLUENT_BIT_BODY) == {"accepted": 4}
    assert call(bench_sink + "/fluent-bit", FLUENT_BIT_BODY) == {"accepted": 4}
    stats = call(bench_sink + "/stats")
    assert (stats["requests"], stats["events"], stats["bad"]) == (2, 8, 0)
    assert stats["body_bytes"] == 2 * len(FLUENT_BIT_BODY)
    assert stats["last_event"] >= stats["first_event"] > 0
    assert stats["lag_n"] == 0


def test_live_lines_from_fluent_bit_are_parsed_for_their_lag(bench_sink: str) -> None:
    call(bench_sink + "/reset", b"")
    sent = time.time() - 0.5
    records = [{"date": sent, "log": f"LIVE {sent:.6f} {i} BLASTN 2.15.0+ \"q\" \\ é"} for i in range(3)]
    body = json.dumps(records, ensure_ascii=True).encode()
    assert call(bench_sink + "/fluent-bit", body) == {"accepted": 3}
    stats = call(bench_sink + "/stats")
    assert (stats["events"], stats["lag_n"], stats["bad"]) == (3, 3, 0)
    assert 0.5 <= stats["lag_p50"] <= stats["lag_max"] < 30
    assert stats["line_chars"] == sum(len(r["log"]) for r in records)
