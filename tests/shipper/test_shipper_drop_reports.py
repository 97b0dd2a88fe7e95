"""Past the stream budget, lines left out are reported in steps of `--drop-report-bytes` while the
container writes, so the checkpoint moves past them and their volume space can be given back.
Where a report ends depends only on the lines, so a shipper killed and restarted forms the same
reports again: every line is stored or counted by exactly one marker."""

from __future__ import annotations

import asyncio
import itertools
import random
import signal
from pathlib import Path

from shipper_helpers import Recorder, append, eventually, shipping

from blastlogs.protocol import Dropped
from shipper.tailring import TailRing


def feed(ring: TailRing, sizes: list[int], cuts: list[int]) -> list[Dropped]:
    """Lines of `sizes` bytes (events as long) into the ring in pieces ending at `cuts`."""
    offs = [sum(sizes[:i]) for i in range(len(sizes))]
    reports: list[Dropped] = []
    start = 0
    for cut in [*cuts, len(sizes)]:
        ends = [offs[i] + sizes[i] for i in range(start, cut)]
        ring.extend(offs[start:cut], ends, [b"e" * sizes[i] for i in range(start, cut)])
        reports += ring.take_reports()
        start = cut
    return reports


def test_reports_end_where_the_lines_say_whatever_the_reads() -> None:
    rnd = random.Random(7)
    sizes = [rnd.randrange(5, 200) for _ in range(3000)]
    one = feed(TailRing(2000, report_bytes=10_000), sizes, [])
    assert len(one) >= 20
    for _ in range(5):
        cuts = sorted(rnd.sample(range(1, len(sizes)), 40))
        assert feed(TailRing(2000, report_bytes=10_000), sizes, cuts) == one
    # contiguous, each the shortest run reaching the step
    for a, b in itertools.pairwise(one):
        assert a.off + a.bytes == b.off
    assert all(d.bytes >= 10_000 and d.bytes - 200 < 10_000 for d in one)
    # without a step: one report, as before
    ring = TailRing(2000)
    assert feed(ring, sizes, []) == [] and ring.dropped is not None


def line(i: int) -> bytes:
    return b"line %06d %s\n" % (i, b"." * 40)


async def test_a_killed_shipper_forms_the_same_reports_again(volume: Path, recorder: Recorder) -> None:
    path = volume / "logs" / "blast.log"
    args = ("--stream-budget-bytes", "20000", "--drop-report-bytes", "30000", "--tail-ring-bytes", "8000")
    total = 0
    append(path, b"".join(line(i) for i in range(4000)))
    total = 4000
    async with shipping(volume, [recorder.url], *args) as first:
        await eventually(lambda: sum(1 for b in recorder.accepted if b["dropped"]["lines"]) >= 3,
                         what="reports while writing")
        first.signal(signal.SIGKILL)
        await first.wait()
    append(path, b"".join(line(i) for i in range(total, total + 3000)))
    total += 3000
    async with shipping(volume, [recorder.url], *args) as second:
        await asyncio.sleep(0.5)
        assert await second.stop() == 0
    size = len(line(0))
    stored = {ev["off"] // size for b in recorder.batches("blast") for ev in b["events"]}
    reports: dict[int, set[tuple[int, int]]] = {}
    for b in recorder.batches("blast"):
        if b["dropped"]["lines"]:
            d = b["dropped"]
            reports.setdefault(d["off"], set()).add((d["lines"], d["bytes"]))
    assert all(len(copies) == 1 for copies in reports.values()), reports  # a re-sent report is the same
    covered = [0] * total
    for i in stored:
        covered[i] += 1
    for off, ((lines, nbytes),) in reports.items():
        assert off % size == 0 and nbytes == lines * size
        for i in range(off // size, off // size + lines):
            covered[i] += 1
    assert covered == [1] * total
    assert recorder.eof("blast")
