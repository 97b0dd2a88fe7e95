"""Adaptive linger, on simulated time: a stream printing a line a second sends at most 1,800 batches an
hour with every line shipped within 2 s; a busy stream still flushes after `linger` (issue 16)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from shipper import packer as packer_module
from shipper.batch import Events, Identity, Limits
from shipper.config import OPTIONS
from shipper.metrics import ShipperMetrics
from shipper.packer import Packer
from shipper.reader import Cursor
from shipper.sender import Outbox
from shipper.tailring import TailRing

POLL = 0.25  # the stream loop's default poll interval: it checks the linger at least this often


def default(name: str) -> float:
    value = next(o.default for o in OPTIONS if o.name == name)
    assert isinstance(value, float)
    return value


def simulated_packer(monkeypatch: pytest.MonkeyPatch, max_events: int) -> tuple[SimpleNamespace, Outbox, Packer]:
    """A packer with the default linger on a simulated clock (`clock.now`), batches of `max_events`."""
    clock = SimpleNamespace(now=0.0)
    monkeypatch.setattr(packer_module, "time", SimpleNamespace(time=lambda: clock.now))
    outbox = Outbox(ShipperMetrics(), "blast")
    packer = Packer("pod/blast", "blast", Limits.for_body(Identity("elb-1", "pod", "blast", "running"), max_events,
                                                          1 << 20),
                    budget=1 << 40, ring=TailRing(cap=1 << 20), linger=default("linger"), outbox=outbox,
                    metrics=ShipperMetrics(), linger_max=default("linger_max"))
    return clock, outbox, packer


async def simulate(monkeypatch: pytest.MonkeyPatch, lines_per_second: float, seconds: float) -> tuple[int, list[float]]:
    """Lines at a steady rate for `seconds` of simulated time; the batches formed and each line's lag."""
    clock, outbox, packer = simulated_packer(monkeypatch, 1000)
    born: dict[int, float] = {}
    lags: list[float] = []
    batches = 0

    async def take() -> None:
        nonlocal batches
        while (b := await outbox.get()) is not None:
            batches += 1
            lags.extend(clock.now - born[off] for off in b.offs)

    taker = asyncio.create_task(take())
    step, off, next_line = 1 / lines_per_second, 0, 0.0
    ticks = [i * POLL for i in range(int(seconds / POLL) + 1)]
    while ticks or next_line < seconds:
        if next_line < seconds and (not ticks or next_line <= ticks[0]):
            clock.now = next_line
            event = b'{"off":%d,"line":"x"}' % off
            born[off] = clock.now
            await packer._pack(Events.of([event], [off], off + 2), clock.now, Cursor(1, 1, off + 2, 0), budgeted=False)
            off, next_line = off + 2, next_line + step
        else:
            clock.now = ticks.pop(0)
        await packer.flush_if_lingered()  # the stream loop checks after each read and each poll
        await asyncio.sleep(0)
    await packer.flush()
    await outbox.close()
    await taker
    return batches, lags


def p99(values: list[float]) -> float:
    return sorted(values)[int(0.99 * (len(values) - 1))]


async def test_a_line_a_second_is_at_most_1800_batches_an_hour_within_2_s(monkeypatch: pytest.MonkeyPatch) -> None:
    batches, lags = await simulate(monkeypatch, 1.0, 3600)
    assert len(lags) == 3600
    assert batches <= 1800, batches
    assert p99(lags) <= 2.0 and max(lags) <= 2.0, (p99(lags), max(lags))


async def test_a_line_every_two_seconds_waits_at_most_linger_max(monkeypatch: pytest.MonkeyPatch) -> None:
    _, lags = await simulate(monkeypatch, 0.5, 600)
    assert max(lags) <= default("linger_max") + POLL <= 2.0


async def test_a_busy_stream_still_flushes_after_linger(monkeypatch: pytest.MonkeyPatch) -> None:
    batches, lags = await simulate(monkeypatch, 20.0, 60)
    assert max(lags) <= default("linger") + POLL
    assert batches >= 60 / (default("linger") + POLL)


async def test_a_full_batch_goes_at_once_without_waiting_for_linger(monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch that takes no more events is handed to the sender when it fills, not when the next line
    comes or the linger runs out (a file whose line count is a multiple of the batch size: its
    last batch waited `linger` plus a poll at the end of the file)."""
    clock, outbox, packer = simulated_packer(monkeypatch, 10)
    events = [b'{"off":%d,"line":"x"}' % (2 * i) for i in range(25)]
    offs = [2 * i for i in range(25)]

    async def place(lo: int, hi: int) -> None:
        await packer._pack(Events.of(events[lo:hi], offs[lo:hi], offs[hi - 1] + 2), clock.now,
                           Cursor(1, 1, offs[hi - 1] + 2, 0), budgeted=False)

    taken: list[list[int]] = []

    async def take() -> None:
        while (b := await outbox.get()) is not None:
            taken.append(b.offs)

    taker = asyncio.create_task(take())
    await place(0, 10)  # exactly one batch's worth
    await asyncio.sleep(0)
    assert taken == [offs[0:10]] and not packer.building
    await place(10, 25)  # one more full batch, and five lines that wait for company
    await asyncio.sleep(0)
    assert taken == [offs[0:10], offs[10:20]] and len(packer.builder.events) == 5
    await packer.flush_if_lingered()  # no time passed: the five wait
    assert len(packer.builder.events) == 5
    await packer.flush()
    await outbox.close()
    await taker
    assert taken == [offs[0:10], offs[10:20], offs[20:25]]
