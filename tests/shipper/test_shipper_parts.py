"""The shipper's core, in-process: batch packing, the tail ring, checkpoint pacing, the packer's
budget and drain, and a whole `Runner` against a real local HTTP recorder."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
from shipper_helpers import JOB_ID, POD, TOKEN, Recorder, append, eventually

from blastlogs.protocol import Dropped
from shipper.batch import Batch, Events, Identity, Limits
from shipper.checkpoints import Checkpoint, Checkpointer
from shipper.config import load_config
from shipper.metrics import ShipperMetrics
from shipper.packer import Packer
from shipper.prepare import prepare
from shipper.reader import Cursor, LineReader
from shipper.redact import CLEAN_STATE
from shipper.runner import Runner, build_parts
from shipper.sanitise import Sanitiser
from shipper.sender import Outbox
from shipper.tailring import TailRing
from shipper.worker_process import WorkerPlan

# ---- Batch packing ------------------------------------------------------------------------------


def pack_one_by_one(events: list[bytes], limits: Limits) -> list[list[bytes]]:
    """The rule stated plainly: a batch takes an event while it stays within both limits."""
    out: list[list[bytes]] = [[]]
    for event in events:
        cur = out[-1]
        size = sum(map(len, cur)) + len(cur) - 1 if cur else 0
        if cur and (len(cur) >= limits.max_events or size + 1 + len(event) > limits.max_bytes):
            out.append(cur := [])
        cur.append(event)
    return out


def pack_in_runs(events: list[bytes], limits: Limits) -> list[Batch]:
    batches, i = [Batch()], 0
    run = Events.of(events, range(len(events)), len(events))
    while i < len(events):
        b = batches[-1]
        if b.full_for(len(events[i]), limits):
            batches.append(Batch())
            continue
        j, sized = b.fitting(run, i, len(events), limits)
        assert j > i and sized == sum(map(len, events[i:j])) + j - i
        b.take(run, i, j, 1.0)
        i = j
    return batches


@pytest.mark.parametrize("seed", range(20))
def test_batches_packed_in_runs_are_those_packed_event_by_event(seed: int) -> None:
    rnd = random.Random(seed)
    events = [b"x" * rnd.choice([1, 5, 40, 300]) for _ in range(rnd.randrange(1, 400))]
    limits = Limits(rnd.choice([1, 3, 50, 1000]), rnd.choice([10, 200, 1000]))
    batches = pack_in_runs(events, limits)
    assert [b.events for b in batches] == pack_one_by_one(events, limits)
    assert [b.offs for b in batches] == [list(range(b.offs[0], b.offs[0] + b.count)) for b in batches]
    for b in batches:
        assert b.size == len(b"".join(b.events)) + len(b.events) - 1 == len(b",".join(b.pieces()))
        assert len(b.events) == 1 or (b.size <= limits.max_bytes and len(b.events) <= limits.max_events)


def test_an_empty_batch_takes_one_event_too_large_and_no_more() -> None:
    limits = Limits(10, 5)
    b = Batch()
    assert not b.full_for(100, limits)
    run = Events.of([b"y" * 100, b"z"], [0, 101], 103)
    assert b.fitting(run, 0, 2, limits) == (1, 101)
    b.take(run, 0, 1, 2.5)
    assert b.size == 100 and b.first_ts == 2.5 and b.full_for(1, limits)


def test_limits_for_a_body_reserve_the_header() -> None:
    ident = Identity("elb-1", "pod-a", "blast", "running")
    limits = Limits.for_body(ident, 7, 10_000)
    assert limits.max_events == 7 and 9_500 < limits.max_bytes < 10_000


# ---- the tail ring ------------------------------------------------------------------------------


def test_the_tail_ring_keeps_the_newest_lines_within_its_cap_and_counts_the_rest() -> None:
    ring = TailRing(cap=10)
    offs = [0, 4, 8, 12]
    ring.extend(offs, [4, 8, 12, 16], [b"aaaa", b"bbbb", b"cccc", b"dddd"])
    assert [line[2] for line in ring.lines] == [b"cccc", b"dddd"] and ring.nbytes == 8
    assert ring.dropped == Dropped(0, 2, 8)
    ring.extend([16], [20], [b"eeee"])
    assert ring.dropped == Dropped(0, 3, 12) and len(ring) == 2 and not ring.empty
    assert ring.discard(upto=30) == Dropped(0, 5, 30)
    assert ring.empty and ring.nbytes == 0


def test_the_tail_ring_keeps_one_line_larger_than_its_cap() -> None:
    ring = TailRing(cap=3)
    ring.extend([0], [11], [b"0123456789"])
    assert len(ring) == 1 and ring.dropped is None
    ring.clear()
    assert ring.empty and ring.discard(5) is None


# ---- checkpoint pacing --------------------------------------------------------------------------


def cp(seq: int) -> Checkpoint:
    return Checkpoint("blast", 1, 2, seq * 10, 0, seq, seq * 10)


async def test_paced_checkpoints_write_the_newest_only(tmp_path: Path) -> None:
    checkpointer = Checkpointer(tmp_path)
    paced = checkpointer.paced(interval=3600)
    for seq in range(1, 6):  # all before the writer first runs
        paced.submit(cp(seq))
    await paced.flush()
    assert paced.writes == 1 and paced.written == cp(5) and checkpointer.load("blast") == cp(5)


async def test_paced_checkpoints_wait_out_the_interval_unless_hurried(tmp_path: Path) -> None:
    checkpointer = Checkpointer(tmp_path)
    paced = checkpointer.paced(interval=3600)
    paced.submit(cp(1))
    await eventually(lambda: paced.written == cp(1), what="the first write, at once")
    paced.submit(cp(2))
    paced.submit(cp(3))
    await eventually(lambda: paced.pacing, what="the writer to wait out the interval")
    assert checkpointer.load("blast") == cp(1) and paced.writes == 1
    paced.hurry()
    await paced.flush()
    assert checkpointer.load("blast") == cp(3) and paced.writes == 2
    await paced.close()


# ---- the packer: budget, tail ring and drain ------------------------------------------------------


async def test_the_packer_ships_up_to_the_budget_then_a_tail_with_a_dropped_report(tmp_path: Path) -> None:
    log = tmp_path / "blast.log"
    lines = [f"line {i:03d}".encode() for i in range(100)]  # 9 bytes each with the newline
    log.write_bytes(b"".join(line + b"\n" for line in lines))
    reader = LineReader(log, 1 << 16, 1 << 16)
    assert reader.open()
    chunk = reader.read()
    assert chunk is not None and chunk.count == 100
    outbox = Outbox(ShipperMetrics(), "blast")
    ident = Identity(JOB_ID, POD, "blast", "running")
    packer = Packer("pod/blast", "blast", Limits.for_body(ident, 30, 1 << 20), budget=255,
                    ring=TailRing(cap=5 * 20), linger=0.3, outbox=outbox, metrics=ShipperMetrics())
    formed: list[Batch] = []

    async def take() -> None:
        while (b := await outbox.get()) is not None:
            formed.append(b)

    taker = asyncio.create_task(take())
    await packer.place(chunk, prepare(Sanitiser(), chunk, CLEAN_STATE))
    await packer.finish(reader.cursor)
    await taker
    reader.close()
    shipped, tail = formed[:-1], formed[-1]
    # the line that reaches the budget (bytes 252..261) is the last one shipped, then a flush
    assert [len(b.events) for b in shipped] == [29]
    assert shipped[-1].shipped == 261 and shipped[-1].cursor == Cursor(reader.dev, reader.ino, 261, 0)
    # at drain: one report of the lines the ring pushed out, the lines it kept, and the eof
    assert tail.dropped is not None and tail.dropped.off == 261 and tail.eof
    assert tail.dropped.lines + len(tail.events) == 100 - 29 and len(tail.events) >= 1
    assert tail.offs[-1] == 99 * 9 and tail.cursor.off == 900
    assert tail.shipped == 261  # the tail does not count against the budget


# ---- a whole Runner, in-process -------------------------------------------------------------------


async def test_a_runner_ships_and_drains_in_process(volume: Path, recorder: Recorder) -> None:
    env = {"BLAST_LOGS_DIR": str(volume), "BLAST_LOGS_AGGREGATOR_URL": recorder.url,
           "BLAST_LOGS_TOKEN": TOKEN, "BLAST_LOGS_JOB_ID": JOB_ID, "BLAST_LOGS_POD": POD,
           "BLAST_LOGS_PHASE": "running", "BLAST_LOGS_METRICS_PORT": "0",
           "BLAST_LOGS_POLL_INTERVAL": "0.02", "BLAST_LOGS_LINGER": "0.05"}
    config = load_config([], env)
    runner = Runner(config, build_parts(config, WorkerPlan(cpus=1.0, count=0)))
    running = asyncio.create_task(runner.run())
    append(volume / "logs" / "blast.log", b"one\ntwo\n")
    await eventually(lambda: recorder.lines("blast") == ["one", "two"], what="two lines shipped")
    append(volume / "logs" / "blast.log", b"three, unterminated")
    runner.start_drain()
    assert await running == 0
    assert recorder.lines("blast") == ["one", "two", "three, unterminated"] and recorder.eof("blast")
    assert Checkpointer(config.state_dir).load("blast") is not None
    assert (volume / "bin" / "logwrap").exists()
