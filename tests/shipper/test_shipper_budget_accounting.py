"""Past the stream budget, a drain (SIGTERM) before the shipper read anything and while it still has
bytes past the budget to read: every line written is shipped exactly once or counted in exactly one
`dropped` report, reports count their lines and bytes exactly, shipped and reported bytes add up to
the file, and the tail is the file's last lines, as many as the tail ring's encoded bytes allow.
Also across a drain, more lines (a restarted container appends) and a second shipper run.

Lines of varied length, so the ring's byte bound cuts anywhere, and the last one unterminated (the
drain ships it); once with the aggregator refusing (503) two requests in three. Sent batches are counted one by one, so a line shipped twice is seen (the recorder
always answers 200 at once: nothing is re-sent). bench/budget_accounting.py does the same at other
moments and at the benchmarks' 1 GB scale."""

from __future__ import annotations

import bisect
import random
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from shipper_helpers import Recorder, append, eventually, shipping

BUDGET, RING, STEP = 60_000, 6_000, 50_000
ARGS = ("--stream-budget-bytes", str(BUDGET), "--tail-ring-bytes", str(RING), "--drop-report-bytes", str(STEP))


def numbered(count: int) -> bytes:
    """`count` numbered lines of 12-160 bytes; the last without its newline."""
    rnd = random.Random(19)
    return b"".join(b"%06d %s\n" % (i, b"x" * rnd.randrange(5, 153)) for i in range(count))[:-1]


def check_accounting(data: bytes, batches: list[dict[str, Any]], runs: int = 1) -> dict[str, int]:
    """`batches` in sending order, of `runs` shipper runs one after the other, each drained."""
    starts = [0, *(i + 1 for i, b in enumerate(data) if b == 0x0A)]
    ends = [*starts[1:], len(data)]
    n = len(starts)
    shipped: Counter[int] = Counter()
    for b in batches:
        for ev in b["events"]:
            i = bisect.bisect_left(starts, ev["off"])
            assert starts[i] == ev["off"], f"event at {ev['off']} is not at a line start"
            assert ev["line"] == data[starts[i]:ends[i]].rstrip(b"\n").decode(), ev
            shipped[i] += 1
    assert max(shipped.values()) == 1, [i for i, k in shipped.items() if k > 1][:5]  # none twice
    reported = [0] * n
    reports = [b["dropped"] for b in batches if b["dropped"]["lines"]]
    for d in reports:
        i, j = bisect.bisect_left(starts, d["off"]), bisect.bisect_left(starts, d["off"] + d["bytes"])
        assert starts[i] == d["off"] and (j == n or starts[j] == d["off"] + d["bytes"]), d  # whole lines
        assert d["lines"] == j - i and d.get("exact", True), d
        for k in range(i, j):
            reported[k] += 1
    assert [shipped[i] + reported[i] for i in range(n)] == [1] * n  # each line once: shipped or reported
    assert sum(ends[i] - starts[i] for i in shipped) + sum(d["bytes"] for d in reports) == len(data)
    # the head: up to the line that reaches the budget; the tail: the file's last lines
    head = bisect.bisect_left(ends, BUDGET) + 1
    assert all(shipped[i] for i in range(head)) and not shipped[head]
    last_reported = max(k for k in range(n) if reported[k])
    tail = list(range(last_reported + 1, n))
    assert tail and all(shipped[i] for i in tail)
    # as many as the ring holds: its encoded events within its cap, and not one line more (that line
    # encoded with the tail's first ts; its own read's ts may be up to 3 characters narrower)
    events = {ev["off"]: ev for b in batches for ev in b["events"]}
    held = sum(len(orjson.dumps(events[starts[i]])) for i in tail)
    before = {"off": starts[tail[0] - 1], "ts": events[starts[tail[0]]]["ts"],
              "line": data[starts[tail[0] - 1]:ends[tail[0] - 1]].rstrip(b"\n").decode()}
    assert held <= RING < held + len(orjson.dumps(before)) + 3, (held, len(tail))
    eofs = [b for b in batches if b["eof"]]
    assert len(eofs) == runs and eofs[-1] is batches[-1]
    return {"reports": len(reports), "tail": len(tail)}


@pytest.mark.parametrize("moment", ["before-reading", "while-reading", "before-reading-with-503s"])
async def test_a_drain_past_the_budget_ships_or_reports_each_line_once(
        volume: Path, recorder: Recorder, moment: str) -> None:
    path = volume / "logs" / "blast.log"
    data = numbered(3000)  # about 250 kB: the budget, then reports of STEP bytes, then the tail
    cut = data.index(b"\n", 3 * STEP) + 1 if moment == "while-reading" else len(data)
    append(path, data[:cut])
    if moment.endswith("503s"):
        recorder.script = [200, 503, 503] * 15  # batches, reports and the eof retried (nothing stored)
    async with shipping(volume, [recorder.url], *ARGS) as shipper:
        if moment.startswith("before-reading"):
            await shipper.started()
        else:
            await eventually(lambda: any(b["dropped"]["lines"] for b in recorder.accepted),
                             what="a report while reading past the budget")
            append(path, data[cut:])  # unread bytes past the budget when the drain begins
        shipper.signal(signal.SIGTERM)
        assert await shipper.wait() == 0
    got = check_accounting(data, recorder.sent("blast"))
    assert got["reports"] >= 2 and got["tail"] >= 40  # reports while reading and at the drain
    if moment.endswith("503s"):
        assert sum(1 for _, action, _ in recorder.requests if action == 503) >= 10


async def test_after_a_drain_a_restarted_shipper_goes_on_past_the_budget(volume: Path, recorder: Recorder) -> None:
    path = volume / "logs" / "blast.log"
    data = numbered(6000)
    cut = data.index(b"\n", len(data) // 2) + 1
    append(path, data[:cut])
    async with shipping(volume, [recorder.url], *ARGS) as first:
        await eventually(lambda: sum(1 for b in recorder.accepted if b["dropped"]["lines"]) >= 2,
                         what="reports while reading past the budget")
        assert await first.stop() == 0
    runs = [recorder.sent("blast")]
    append(path, data[cut:])
    async with shipping(volume, [recorder.url], *ARGS) as second:
        await second.started()
        assert await second.stop() == 0
    runs.append(sorted(recorder.batches("blast")[len(runs[0]):], key=lambda b: int(b["seq"])))
    got = check_accounting(data, runs[0] + runs[1], runs=2)
    assert got["reports"] >= 8
