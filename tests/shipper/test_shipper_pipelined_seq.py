"""The sender keeps a second batch on the wire while it waits for the answer to the first, still
takes the answers (and moves the checkpoint) in order, and numbers its requests (`seq`) in sending
order even when the first is split by a 413 after the second went out (docs/protocol.md section 4)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from shipper_helpers import TOKEN, Recorder

from shipper.batch import Batch, Identity
from shipper.checkpoints import Checkpointer
from shipper.client import AggregatorClient
from shipper.http import HttpClient
from shipper.metrics import ShipperMetrics
from shipper.reader import Cursor
from shipper.sender import OUTBOX_DEPTH, PIPELINE, Outbox, Sender

IDENT = Identity("elb-1", "pod-1", "blast", "running")


@dataclass
class HeldAggregator(Recorder):
    """Holds the answer to a batch holding the event at `hold_off` until `release` is set, then
    answers it `held_status` (413 once, for a split); every other batch 200 at once."""

    hold_off: int = 0
    held_status: int = 200
    release: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: list[dict[str, Any]] = field(default_factory=list)
    answered: list[tuple[int, int]] = field(default_factory=list)  # (seq, status), in answer order

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        self.arrived.append(body)
        status = 200
        if any(e["off"] == self.hold_off for e in body["events"]) and not self.release.is_set():
            await self.release.wait()
            status, self.held_status = self.held_status, 200
        self.answered.append((body["seq"], status))
        if status != 200:
            return web.json_response({"error": "too large", "detail": "split it"}, status=status)
        self.accepted.append(body)
        return web.json_response({"accepted": len(body["events"]), "duplicate": False})


def batch(first_off: int, lines: int, *, eof: bool = False) -> Batch:
    b = Batch()
    for i in range(lines):
        b.add(first_off + i * 10, orjson.dumps({"off": first_off + i * 10, "ts": 1.0, "line": "x" * 9}))
    end = first_off + lines * 10
    b.resume_at(Cursor(1, 2, end, 0), end)
    b.seal(None, eof, None)
    return b


async def until(check: Any, what: str) -> None:
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def sender_to(http: HttpClient, agg: HeldAggregator, metrics: ShipperMetrics,
              tmp_path: Path) -> tuple[Outbox, Sender, list[int]]:
    """A stream's outbox and sender, sending to `agg`; the acknowledged offsets, as they come."""
    client = AggregatorClient(http, (agg.url,), TOKEN, timeout=10, use_gzip=False, backoff_base=0.01,
                              backoff_max=0.05, retry_after_max=1, reject_backoff=0.05, metrics=metrics)
    outbox = Outbox(metrics, "blast")
    acked: list[int] = []
    sender = Sender(IDENT, "pod-1/blast", client, outbox, Checkpointer(tmp_path).paced(interval=0.0),
                    metrics, 0.05, None)
    sender.on_ack = lambda: acked.append(sender.acked_off)
    return outbox, sender, acked


async def _run(tmp_path: Path, held_status: int) -> tuple[HeldAggregator, list[int], Sender]:
    """Three batches (3 lines at 0, 2 at 30, the eof batch with 1 at 50), the first one's answer
    held until the second was answered."""
    metrics = ShipperMetrics()
    agg = await HeldAggregator(hold_off=0, held_status=held_status).start()
    try:
        async with HttpClient() as http:
            outbox, sender, acked = sender_to(http, agg, metrics, tmp_path)
            running = asyncio.create_task(sender.run())
            await outbox.put(batch(0, 3))
            await outbox.put(batch(30, 2))
            await outbox.put(batch(50, 1, eof=True))
            # the second batch arrived and was answered while the first one's answer is held
            await until(lambda: agg.answered == [(1, 200)], "the second batch answered")
            assert [b["seq"] for b in agg.arrived] == [0, 1]  # the eof batch waits for the first's answer
            assert acked == [] and sender.acked_off == 0  # nothing acknowledged out of order
            agg.release.set()
            await outbox.close()
            await asyncio.wait_for(running, 10)
    finally:
        await agg.stop()
    return agg, acked, sender


async def test_the_next_batch_goes_out_before_the_answer_and_acks_stay_in_order(tmp_path: Path) -> None:
    agg, acked, sender = await _run(tmp_path, 200)
    assert acked == [30, 50, 60]
    assert [b["seq"] for b in agg.arrived] == [0, 1, 2] and agg.arrived[-1]["eof"]
    assert sender.seq == 3 and sender.eof_acked
    cp = Checkpointer(tmp_path).load("blast")
    assert cp is not None and cp.pos == 60 and cp.seq == 3 and cp.eof


async def test_a_split_after_the_next_batch_went_out_takes_numbers_after_it(tmp_path: Path) -> None:
    agg, acked, sender = await _run(tmp_path, 413)
    # sent: the first (0, refused), the second (1), the first's halves (2, 3), then the eof batch (4)
    assert [b["seq"] for b in agg.arrived] == [0, 1, 2, 3, 4]
    assert [[e["off"] for e in b["events"]] for b in agg.arrived] == [[0, 10, 20], [30, 40], [0], [10, 20], [50]]
    assert agg.answered[:2] == [(1, 200), (0, 413)]
    # acknowledged in stream order: the halves before the second batch's end
    assert acked == [10, 30, 50, 60]
    assert sender.seq == 5 and sender.eof_acked
    cp = Checkpointer(tmp_path).load("blast")
    assert cp is not None and cp.pos == 60 and cp.seq == 5 and cp.eof
    # every accepted event once, and the stream's seq order is the order the batches were sent in
    assert sorted(e["off"] for b in agg.accepted for e in b["events"]) == [0, 10, 20, 30, 40, 50]


async def test_three_batches_go_out_while_the_first_answer_is_held(tmp_path: Path) -> None:
    """`PIPELINE` batches of lines on the wire at once and `OUTBOX_DEPTH` more taken by the outbox
    without waiting, and still acknowledged in order once the first answer comes."""
    metrics = ShipperMetrics()
    agg = await HeldAggregator(hold_off=0).start()
    try:
        async with HttpClient() as http:
            outbox, sender, acked = sender_to(http, agg, metrics, tmp_path)
            running = asyncio.create_task(sender.run())
            for first in range(0, PIPELINE + OUTBOX_DEPTH):  # batches of one line at 0, 10, 20, ...
                await asyncio.wait_for(outbox.put(batch(first * 10, 1)), 5)
            await until(lambda: len(agg.answered) == PIPELINE - 1, "the later batches on the wire answered")
            assert [b["seq"] for b in agg.arrived] == list(range(PIPELINE))
            assert acked == []  # nothing acknowledged before the first
            agg.release.set()
            await outbox.close()
            await asyncio.wait_for(running, 10)
    finally:
        await agg.stop()
    assert acked == [10 * (i + 1) for i in range(PIPELINE + OUTBOX_DEPTH)]
    assert [b["seq"] for b in agg.arrived] == list(range(PIPELINE + OUTBOX_DEPTH))
