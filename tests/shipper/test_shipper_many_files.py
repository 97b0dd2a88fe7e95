"""Thousands of files under a low `ulimit -n` (issue 18): the real `blast-log-shipper run` holds at
most its open-file cap of them, ships every line, and drains."""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

import aiohttp
from conftest import free_port
from shipper_helpers import Recorder, append, eventually, shipping

FILES = 5000
NOFILE = 256


def low_nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def make_files(logs: Path) -> None:
    for i in range(FILES):
        (logs / f"c{i:05d}.log").write_bytes(f"first of {i}\nsecond of {i}\n".encode())


async def test_5000_files_under_ulimit_256(volume: Path, recorder: Recorder) -> None:
    make_files(volume / "logs")
    started = time.monotonic()
    async with shipping(volume, [recorder.url], "--poll-interval", "0.25", BLAST_LOGS_GRACE="90",
                        preexec_fn=low_nofile) as shipper:
        peak = 0

        def delivered() -> bool:
            nonlocal peak
            peak = max(peak, open_fds(shipper.proc.pid))
            assert shipper.proc.returncode is None, "the shipper died"
            return sum(len(b["events"]) for b in recorder.accepted) >= 2 * FILES

        await eventually(delivered, limit=240, what="every line of 5,000 files")
        took = time.monotonic() - started
        # one of the first files, appended to after it was closed for others: reopened by identity
        append(volume / "logs" / "c00000.log", b"third of 0\n")
        await eventually(lambda: "third of 0" in recorder.lines("c00000"), what="the late line")
        assert await shipper.stop(limit=120) == 0
    print(f"\n5,000 files under ulimit -n {NOFILE}: every line in {took:.1f}s, peak {peak} descriptors")
    assert peak < NOFILE
    assert {b["container"] for b in recorder.accepted if b["eof"]} == {f"c{i:05d}" for i in range(FILES)}
    for i in (0, 1234, FILES - 1):
        assert recorder.lines(f"c{i:05d}")[:2] == [f"first of {i}", f"second of {i}"]
    log = shipper.log()
    assert not [r for r in log if r.get("level") == "error"], [r for r in log if r.get("level") == "error"][:3]


async def test_files_past_the_cap_are_closed_and_reopened_by_identity(volume: Path, recorder: Recorder) -> None:
    logs = volume / "logs"
    for i in range(20):
        (logs / f"s{i:02d}.log").write_bytes(f"one {i}\n".encode())
    port = free_port()
    async with shipping(volume, [recorder.url], "--max-open-files", "8",
                        BLAST_LOGS_METRICS_PORT=str(port)) as shipper:
        await eventually(lambda: all(recorder.lines(f"s{i:02d}") == [f"one {i}"] for i in range(20)),
                         what="every file's line")
        metrics = await scrape(port)
        assert metric(metrics, "blast_logs_shipper_open_files") <= 8
        assert metric(metrics, "blast_logs_shipper_files_closed_total") >= 12
        # s00 was closed for the others: appended to, it is reopened (same inode) and read on
        append(logs / "s00.log", b"two 0\n")
        await eventually(lambda: recorder.lines("s00") == ["one 0", "two 0"], what="s00 reopened")
        # s01, closed, is appended to and then replaced: the new file is read, the loss reported
        for _ in range(20):  # read the others, so that s01 is closed again
            for i in range(2, 20):
                append(logs / f"s{i:02d}.log", b"more\n")
        await eventually(lambda: all(len(recorder.lines(f"s{i:02d}")) == 21 for i in range(2, 20)), what="more")
        append(logs / "s01.log", b"unseen\n")
        os.rename(logs / "s01.log", logs / "s01.old")
        (logs / "s01.log").write_bytes(b"new 1\n")
        await eventually(lambda: recorder.lines("s01") == ["one 1", "new 1"], what="s01 replaced")
        assert await shipper.stop() == 0
    (report,) = [b["dropped"] for b in recorder.batches("s01") if b["dropped"]["lines"]]
    assert report == {"off": len(b"one 1\n"), "lines": 1, "bytes": 0, "exact": False}


async def scrape(port: int) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as answer:
        return await answer.text()


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not served")
