"""The sender keeps a second batch on the wire while it waits for the answer to the first, and still
takes the answers (and moves the checkpoint) in order; the eof batch waits for everything before it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from shipper_helpers import TOKEN

from shipper.batch import Batch, Identity
from shipper.checkpoints import Checkpointer
from shipper.client import AggregatorClient
from shipper.http import HttpClient
from shipper.metrics import ShipperMetrics
from shipper.reader import Cursor
from shipper.sender import Outbox, Sender

IDENT = Identity("elb-1", "pod-1", "blast", "running")


class HeldAggregator:
    """Answers a batch that holds the event at offset `hold_off` only once `release` is set."""

    def __init__(self, hold_off: int) -> None:
        self.hold_off = hold_off
        self.release = asyncio.Event()
        self.arrived: list[dict[str, Any]] = []
        self.answered: list[int] = []  # seq of each batch answered, in answer order
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        self.arrived.append(body)
        if any(e["off"] == self.hold_off for e in body["events"]):
            await self.release.wait()
        self.answered.append(body["seq"])
        return web.json_response({"accepted": len(body["events"]), "duplicate": False})

    async def __aenter__(self) -> HeldAggregator:
        app = web.Application()
        app.router.add_post("/v1/ingest", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release.set()
        if self.runner is not None:
            await self.runner.cleanup()


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


async def test_the_next_batch_goes_out_before_the_answer_and_acks_stay_in_order(tmp_path: Path) -> None:
    metrics = ShipperMetrics()
    async with HeldAggregator(hold_off=0) as agg, HttpClient() as http:
        client = AggregatorClient(http, (agg.url,), TOKEN, timeout=10, use_gzip=False, backoff_base=0.01,
                                  backoff_max=0.05, retry_after_max=1, reject_backoff=0.05, metrics=metrics)
        outbox = Outbox(metrics, "blast")
        acked: list[int] = []
        sender = Sender(IDENT, "pod-1/blast", client, outbox, Checkpointer(tmp_path).paced(interval=0.0),
                        metrics, 0.05, None)
        sender.on_ack = lambda: acked.append(sender.acked_off)
        running = asyncio.create_task(sender.run())
        await outbox.put(batch(0, 3))
        await outbox.put(batch(30, 2))
        await outbox.put(batch(50, 1, eof=True))
        # the second batch arrived and was answered while the first one's answer is held
        await until(lambda: agg.answered == [1], "the second batch answered")
        assert [b["seq"] for b in agg.arrived] == [0, 1]  # the eof batch waits for the first's answer
        assert acked == [] and sender.acked_off == 0  # nothing acknowledged out of order
        agg.release.set()
        await outbox.close()
        await asyncio.wait_for(running, 10)
        assert acked == [30, 50, 60]
        assert [b["seq"] for b in agg.arrived] == [0, 1, 2] and agg.arrived[-1]["eof"]
        assert sender.seq == 3 and sender.eof_acked
        cp = Checkpointer(tmp_path).load("blast")
        assert cp is not None and cp.pos == 60 and cp.seq == 3 and cp.eof
