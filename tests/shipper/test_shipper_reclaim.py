"""The volume never fills with shipped data (issue 17): the shipper punches holes over each log's
delivered (or reported-as-dropped) prefix while the container still writes.

Real processes on a real size-limited volume: a tmpfs the test mounts (root only), a writer under
the installed `logwrap`, the real shipper, and a counting aggregator stand-in that checks every
line it is given. Eight times the volume's size goes through it; no write fails, every line is
stored or counted by a marker, and the volume's use stays under its limit. With the aggregator
down nothing is delivered, so nothing is given back: the volume's size limit is then the bound.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from conftest import free_port
from shipper_helpers import ROOT, TOKEN, Shipper, eventually, start_shipper

from shipper.diskuse import risk_text
from shipper.metrics import ShipperMetrics
from shipper.reclaim import HEAD_KEEP, MIN_STEP, TAIL_KEEP, Reclaimer, punch_hole, span

MiB = 1024 * 1024
LINE = 512  # bytes per line, newline included: line i starts at stream offset i * LINE


def line(i: int) -> bytes:
    """What bench/paced_writer.py writes as line i."""
    return b"%010d %s\n" % (i, b"x" * (LINE - 12))


# ---- the arithmetic, and one hole on a real tmpfs --------------------------------------------------


def test_the_span_is_block_aligned_and_keeps_the_head_and_the_bytes_before_the_checkpoint() -> None:
    assert span(0, HEAD_KEEP + TAIL_KEEP + MIN_STEP - 1, 4096) is None  # less than a step
    start, end = span(0, 10 * MiB + 123, 4096) or (0, 0)
    assert start == HEAD_KEEP and end == (10 * MiB + 123 - TAIL_KEEP) // 4096 * 4096
    assert span(end, end + TAIL_KEEP + 4096, 4096, step=4096) == (end, end + 4096)
    assert span(end, end + TAIL_KEEP + 4095, 4096, step=4096) is None  # never a partial block


@dataclass
class Mounts:
    """Mounts a filesystem of a kind on a fresh folder; unmounted at teardown."""

    base: Path
    done: list[Path] = field(default_factory=list)

    def mount(self, kind: str, options: str = "") -> Path:
        where = self.base / f"{kind}{len(self.done)}"
        where.mkdir()
        args = ["mount", "-t", kind, *(["-o", options] if options else []), kind, str(where)]
        done = subprocess.run(args, capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount {kind}: {done.stderr.strip()}")
        self.done.append(where)
        return where


@pytest.fixture
def mounts(tmp_path: Path) -> Iterator[Mounts]:
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited volume needs root")
    m = Mounts(tmp_path)
    yield m
    for where in reversed(m.done):
        subprocess.run(["umount", "-l", str(where)], check=False)


def used(volume: Path) -> int:
    st = os.statvfs(volume)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def test_punching_a_hole_gives_the_space_back_and_keeps_size_and_appends(mounts: Mounts) -> None:
    volume = mounts.mount("tmpfs", "size=16m")
    path = volume / "blast.log"
    data = os.urandom(8 * MiB)
    path.write_bytes(data)
    before = used(volume)
    with open(path, "ab") as writer:  # the container keeps appending meanwhile
        fd = os.open(path, os.O_WRONLY)
        try:
            punch_hole(fd, 0, 6 * MiB)
        finally:
            os.close(fd)
        writer.write(b"after\n")
    assert before - used(volume) >= 6 * MiB - 64 * 1024
    assert path.stat().st_size == 8 * MiB + 6
    with open(path, "rb") as f:
        assert f.read(6 * MiB) == bytes(6 * MiB)  # a hole reads as zeros
        assert f.read() == data[6 * MiB:] + b"after\n"


@dataclass(frozen=True)
class At:
    """A checkpoint's position (`reclaim.Position`)."""

    dev: int
    ino: int
    pos: int
    base: int = 0

    @property
    def off(self) -> int:
        return self.base + self.pos


def test_a_filesystem_that_cannot_punch_is_said_once_counted_and_left_alone(
        mounts: Mounts, capsys: pytest.CaptureFixture[str]) -> None:
    volume = mounts.mount("ramfs")  # ramfs has no fallocate: EOPNOTSUPP
    path = volume / "blast.log"
    path.write_bytes(b"x" * (4 * MiB))
    st = path.stat()
    metrics = ShipperMetrics()
    risks: dict[str, str | None] = {}
    reclaimer = Reclaimer(path, "blast", metrics, lambda what, text: risks.__setitem__(what, text))
    for pos in (2 * MiB, 3 * MiB, 4 * MiB):
        reclaimer.give_back(At(st.st_dev, st.st_ino, pos))
    assert reclaimer.unsupported
    assert metrics.registry.get_sample_value("blast_logs_shipper_reclaim_errors_total",
                                             {"reason": "unsupported"}) == 1
    assert "cannot punch holes" in (risks["reclaim"] or "")
    assert capsys.readouterr().err.count("cannot give back delivered log space") == 1
    assert path.read_bytes() == b"x" * (4 * MiB)


def test_a_truncated_file_is_punched_again_from_its_start(mounts: Mounts) -> None:
    volume = mounts.mount("tmpfs", "size=32m")
    path = volume / "blast.log"
    path.write_bytes(os.urandom(8 * MiB))
    st = path.stat()
    reclaimer = Reclaimer(path, "blast", ShipperMetrics())
    reclaimer.give_back(At(st.st_dev, st.st_ino, 8 * MiB))
    assert reclaimer.punched == 8 * MiB - TAIL_KEEP
    with open(path, "r+b") as f:  # the container truncates its log and writes on
        f.truncate(0)
        f.write(os.urandom(4 * MiB))
    empty = used(volume)
    reclaimer.give_back(At(st.st_dev, st.st_ino, 4 * MiB, base=8 * MiB))  # the next generation
    assert reclaimer.punched == 4 * MiB - TAIL_KEEP
    assert empty - used(volume) >= 4 * MiB - HEAD_KEEP - TAIL_KEEP - 64 * 1024


def test_a_replaced_file_or_a_symlink_is_not_punched(mounts: Mounts) -> None:
    volume = mounts.mount("tmpfs", "size=16m")
    path = volume / "blast.log"
    path.write_bytes(b"y" * (4 * MiB))
    st = path.stat()
    other = volume / "other"
    other.write_bytes(b"z" * (4 * MiB))
    reclaimer = Reclaimer(path, "blast", ShipperMetrics())
    path.unlink()
    path.symlink_to(other)
    reclaimer.give_back(At(st.st_dev, st.st_ino, 4 * MiB))
    assert other.read_bytes() == b"z" * (4 * MiB)
    path.unlink()
    os.link(other, path)  # a regular file, but not the one the checkpoint names
    reclaimer.give_back(At(st.st_dev, st.st_ino, 4 * MiB))
    assert other.read_bytes() == b"z" * (4 * MiB)


# ---- eight times the volume through logwrap, while the real shipper ships --------------------------


@dataclass
class CountingSink:
    """Answers POST /v1/ingest like the aggregator; checks each line against what the writer wrote
    at its offset and marks it; keeps the dropped reports. `down`: answer 503."""

    total: int
    seen: bytearray = field(init=False)
    dropped: list[tuple[int, int, int]] = field(default_factory=list)
    down: bool = False
    eof: bool = False
    bad: list[str] = field(default_factory=list)
    runner: web.AppRunner | None = None
    url: str = ""

    def __post_init__(self) -> None:
        self.seen = bytearray(self.total)

    async def handle(self, request: web.Request) -> web.Response:
        if self.down:
            return web.json_response({"error": "unavailable"}, status=503)
        body = orjson.loads(await request.read())
        for ev in body["events"]:
            i, rest = divmod(ev["off"], LINE)
            if rest or i >= self.total or ev["line"].encode() + b"\n" != line(i):
                self.bad.append(f"off {ev['off']}: {ev['line'][:40]!r}")
            else:
                self.seen[i] = 1
        drop = body.get("dropped") or {}
        if drop.get("lines"):
            self.dropped.append((drop["off"], drop["lines"], drop["bytes"]))
        self.eof = self.eof or body["eof"]
        return web.json_response({"accepted": len(body["events"]), "duplicate": False})

    async def start(self) -> CountingSink:
        app = web.Application(client_max_size=8 * MiB)
        app.router.add_post("/v1/ingest", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        return self

    def unaccounted(self) -> int:
        """Lines neither stored nor inside exactly one dropped report."""
        covered = bytearray(self.seen)
        for off, lines, nbytes in sorted(set(self.dropped)):
            assert off % LINE == 0 and nbytes == lines * LINE, (off, lines, nbytes)
            first = off // LINE
            assert not any(covered[first:first + lines]), f"report at {off} covers stored lines"
            covered[first:first + lines] = b"\x01" * lines
        return covered.count(0)




def write_through_logwrap(volume: Path, nbytes: int, rate: float) -> subprocess.CompletedProcess[bytes]:
    """A job container printing `nbytes` at `rate` bytes/s under logwrap (its stdout discarded)."""
    return subprocess.run(
        [str(volume / "bin" / "logwrap"), "blast", "--", sys.executable,
         str(ROOT / "bench" / "paced_writer.py"), str(LINE), str(nbytes // LINE), str(rate)],
        env={**os.environ, "BLAST_LOGS_DIR": str(volume)}, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, timeout=300)


class Sampler:
    """The volume's use, sampled every 20 ms in a thread: its peak."""

    def __init__(self, volume: Path) -> None:
        self.volume = volume
        self.peak = used(volume)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, used(self.volume))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return sum(float(row.split()[-1]) for row in resp.read().decode().splitlines()
                   if row.startswith(name + "{") or row.startswith(name + " "))


@pytest.fixture
async def sink_factory() -> AsyncIterator[Callable[[int], Any]]:
    sinks: list[CountingSink] = []

    async def make(total_lines: int) -> CountingSink:
        sink = await CountingSink(total_lines).start()
        sinks.append(sink)
        return sink

    yield make
    for sink in sinks:
        assert sink.runner is not None
        await sink.runner.cleanup()


async def start_on(volume: Path, sink: CountingSink, port: int, **env: str) -> Shipper:
    shipper = await start_shipper(volume, [sink.url], token=TOKEN, BLAST_LOGS_METRICS_PORT=str(port),
                                  BLAST_LOGS_SANITISE_WORKERS="0", BLAST_LOGS_LINGER="0.05", **env)
    await shipper.started()
    return shipper


LIMIT = 32 * MiB


@pytest.mark.parametrize(("budget", "report"), [(1 << 40, 16 * MiB), (24 * MiB, 4 * MiB)],
                         ids=["all-shipped", "past-the-stream-budget"])
async def test_eight_times_the_volume_goes_through_it_while_the_shipper_ships(
        mounts: Mounts, sink_factory: Callable[[int], Any], budget: int, report: int) -> None:
    volume = mounts.mount("tmpfs", f"size={LIMIT // MiB}m")
    total = 8 * LIMIT
    sink: CountingSink = await sink_factory(total // LINE)
    port = free_port()
    shipper = await start_on(volume, sink, port, BLAST_LOGS_STREAM_BUDGET_BYTES=str(budget),
                             BLAST_LOGS_DROP_REPORT_BYTES=str(report))
    sampler = Sampler(volume)
    began = time.monotonic()
    done = await asyncio.to_thread(write_through_logwrap, volume, total, 12 * MiB)
    seconds = time.monotonic() - began
    assert done.returncode == 0 and done.stderr == b"", done.stderr[-2000:]
    assert (volume / "logs" / "blast.log").stat().st_size == total  # every write went in
    assert await shipper.stop() == 0
    peak = sampler.stop()
    assert not sink.bad, sink.bad[:5]
    assert sink.eof and sink.unaccounted() == 0
    if budget > total:
        assert not sink.dropped and sink.seen.count(0) == 0  # every line stored
    else:
        assert len(sink.dropped) >= 2  # reported in steps while writing, and the rest at drain
    assert peak < LIMIT * 3 // 4, f"peak use {peak / MiB:.1f} MiB of {LIMIT / MiB:.0f} MiB"
    print(f"\n{total / MiB:.0f} MiB through {LIMIT / MiB:.0f} MiB in {seconds:.1f} s; "
          f"peak use {peak / MiB:.1f} MiB; dropped reports {len(sink.dropped)}")


def healthz(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
        body: dict[str, Any] = orjson.loads(resp.read())
        return body


async def test_with_the_aggregator_down_nothing_is_given_back_until_it_returns(
        mounts: Mounts, sink_factory: Callable[[int], Any]) -> None:
    volume = mounts.mount("tmpfs", f"size={LIMIT // MiB}m")
    total = LIMIT * 7 // 8
    sink: CountingSink = await sink_factory(total // LINE)
    sink.down = True
    port = free_port()
    shipper = await start_on(volume, sink, port, BLAST_LOGS_BACKOFF_MAX="0.2",
                             BLAST_LOGS_VOLUME_LIMIT_BYTES=str(LIMIT))
    empty = used(volume)
    done = await asyncio.to_thread(write_through_logwrap, volume, total, 32 * MiB)
    assert done.returncode == 0 and done.stderr == b""
    # Nothing delivered, nothing given back: the whole log is on the volume. What bounds it now is
    # the volume's size limit (then the kubelet evicts the pod): there is no loss policy. The
    # shipper says so before the limit: the logs hold 7/8 of it.
    assert used(volume) - empty >= total
    await eventually(lambda: any("the pod risks eviction" in p for p in healthz(port)["problems"]),
                     what="the risk said")
    assert healthz(port)["status"] == "degraded"
    assert metric(port, "blast_logs_shipper_log_disk_bytes") >= total
    assert metric(port, "blast_logs_shipper_volume_limit_bytes") == LIMIT
    assert metric(port, "blast_logs_shipper_reclaimed_bytes_total") == 0
    sink.down = False
    await eventually(lambda: sink.seen.count(0) == 0, limit=60, what="everything delivered")
    await eventually(lambda: used(volume) - empty < MIN_STEP + HEAD_KEEP + TAIL_KEEP + 2 * MiB,
                     what="the delivered space given back")
    assert metric(port, "blast_logs_shipper_reclaimed_bytes_total") >= total - 4 * MiB
    await eventually(lambda: healthz(port)["status"] == "ok", what="no risk any more")
    assert metric(port, "blast_logs_shipper_log_disk_bytes") < 4 * MiB
    assert await shipper.stop() == 0
    assert not sink.bad and sink.unaccounted() == 0


def test_the_risk_is_said_past_four_fifths_of_a_known_limit() -> None:
    assert risk_text(80, 100) is None and risk_text(10**9, 0) is None
    assert risk_text(900 * MiB, 1024 * MiB) == (
        "the logs hold 88% of the volume's 1024 MiB limit (900 MiB not yet delivered): the pod risks eviction")
