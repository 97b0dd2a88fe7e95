"""Batch boundaries of `blast-log-shipper run` (a real process against the recording stand-in).

A file written before the shipper starts is read in one go, so every batch but the last is closed
only because the next line did not fit: by event count, or by bytes (the body limit less the
header reserve). The stream budget cuts after the line that reaches it.
"""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path
from typing import Any

from shipper_helpers import JOB_ID, POD, Recorder, eventually, shipping

from shipper.batch import Identity, encode_event, header_reserve


async def _ship(volume: Path, recorder: Recorder, lines: list[str], *args: str,
                shipped_before_drain: int | None = None) -> list[dict[str, Any]]:
    """Ship `lines`; the drain starts once the first `shipped_before_drain` (all) are delivered."""
    (volume / "logs" / "blast.log").write_bytes("".join(s + "\n" for s in lines).encode())
    before = lines[:shipped_before_drain]
    async with shipping(volume, [recorder.url], *args) as shipper:
        await eventually(lambda: recorder.lines("blast") == before, what="the lines shipped before the drain")
        assert await shipper.stop() == 0
    return [b for b in recorder.sent("blast") if b["events"]]


def _sizes(batch: dict[str, Any]) -> list[int]:
    return [len(encode_event(e["off"], e["ts"], e["line"])) for e in batch["events"]]


async def test_batches_fill_up_to_the_event_count(volume: Path, recorder: Recorder) -> None:
    lines = [f"l{i}" for i in range(100)]
    batches = await _ship(volume, recorder, lines, "--batch-max-events", "7")
    assert [len(b["events"]) for b in batches] == [7] * 14 + [2]
    assert recorder.lines("blast") == lines


async def test_batches_fill_up_to_the_byte_limit(volume: Path, recorder: Recorder) -> None:
    lines = [f"{i:04d} " + "x" * (i * 37 % 300) + "é" * (i % 5) for i in range(400)]
    max_bytes = 4000
    budget = max_bytes - header_reserve(Identity(JOB_ID, POD, "blast", "running"))
    batches = await _ship(volume, recorder, lines, "--batch-max-bytes", str(max_bytes))
    assert recorder.lines("blast") == lines
    for batch, after in pairwise(batches):
        size = sum(_sizes(batch)) + len(batch["events"]) - 1
        assert size <= budget
        assert size + 1 + _sizes(after)[0] > budget  # closed only because the next did not fit
    offs = [e["off"] for b in batches for e in b["events"]]
    assert offs == [sum(len(s.encode()) + 1 for s in lines[:i]) for i in range(len(lines))]


async def test_an_oversized_line_gets_a_batch_of_its_own(volume: Path, recorder: Recorder) -> None:
    lines = ["a", "b", "y" * 3000, "c", "d"]
    batches = await _ship(volume, recorder, lines, "--batch-max-bytes", "2000")
    assert [[e["line"][:1] for e in b["events"]] for b in batches] == [["a", "b"], ["y"], ["c", "d"]]


async def test_the_budget_cuts_after_the_line_that_reaches_it(volume: Path, recorder: Recorder) -> None:
    lines = [f"line {i:05d}" for i in range(300)]  # 11 bytes each with the newline
    head = -(-1000 // 11)
    batches = await _ship(volume, recorder, lines, "--stream-budget-bytes", "1000",
                          "--tail-ring-bytes", "100000", "--batch-max-events", "40", shipped_before_drain=head)
    shipped = [e["line"] for b in batches for e in b["events"]]
    assert shipped == lines  # the ring held the rest and shipped it at drain
    cut = [i for i, b in enumerate(batches) if b["dropped"]["lines"]]
    assert cut == []  # nothing left the ring
    sizes = [len(b["events"]) for b in batches]
    assert sizes[:head // 40 + 1] == [40] * (head // 40) + [head % 40]
    first_after_budget = next(i for i, b in enumerate(batches) if b["events"][0]["off"] >= head * 11)
    assert sum(sizes[:first_after_budget]) == head


async def test_a_backlog_read_to_its_end_does_not_wait_for_linger(volume: Path, recorder: Recorder) -> None:
    """A file of more than one read read to its end: the last, partial batch goes at once (its lines
    waited in the file, not for company); with a linger of a minute it would wait that long."""
    lines = [f"line {i:05d}" for i in range(2500)]  # 27,500 bytes: seven reads of 4 KiB
    (volume / "logs" / "blast.log").write_bytes("".join(s + "\n" for s in lines).encode())
    async with shipping(volume, [recorder.url], "--read-size", "4096", "--batch-max-events", "1000",
                        "--linger", "60", "--linger-max", "60") as shipper:
        await eventually(lambda: recorder.lines("blast") == lines, limit=20, what="every line, before the linger")
        assert await shipper.stop() == 0
    assert [len(b["events"]) for b in recorder.sent("blast") if b["events"]] == [1000, 1000, 500]
