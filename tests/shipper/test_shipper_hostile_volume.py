"""The shared volume is hostile input (issue 18): the real `blast-log-shipper run` against FIFOs,
device links and symlinks to secrets placed where it reads, with a well-behaved stream alongside."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from shipper_helpers import TOKEN, Recorder, append, eventually, shipping

CANARY = "canary-from-the-shippers-environment-7f3a"


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def test_fifos_devices_and_symlinks_neither_hang_nor_leak(volume: Path, recorder: Recorder) -> None:
    logs, state = volume / "logs", volume / "state"
    state.mkdir()
    token_file = volume.parent / "token"
    token_file.write_text(TOKEN + "\n")
    (logs / "good.log").write_bytes(b"good 0\n")
    (logs / "evil.log").write_bytes(b"evil line\n")
    os.mkfifo(logs / "evil.exit")  # a reader that waits for a writer would hang here
    (logs / "evil2.log").write_bytes(b"x\n")
    os.mkfifo(state / "evil2.json")  # the checkpoint of evil2: likewise
    (logs / "zero.log").write_bytes(b"zero line\n")
    os.symlink("/dev/zero", logs / "zero.exit")  # an endless exit file
    os.symlink(token_file, logs / "tok.log")
    os.symlink("/proc/self/environ", logs / "env.log")
    os.symlink("/proc/self/cmdline", logs / "cmd.log")
    os.mkfifo(logs / "pipe.log")
    (logs / "fifo.log").write_bytes(b"before\n")
    # A lone line may wait up to --linger-max for company (issue 16); this test times stalls, so the
    # shipper sends each line after the plain linger.
    async with shipping(volume, [recorder.url], BLAST_LOGS_TOKEN_FILE=str(token_file),
                        BLAST_LOGS_GRACE="10", BLAST_LOGS_LINGER_MAX="0.1", HOSTILE_CANARY=CANARY) as shipper:
        pid = shipper.proc.pid
        await eventually(lambda: recorder.lines("fifo") == ["before"], what="fifo.log's first line")
        os.mkfifo(logs / "fifo.tmp")
        os.rename(logs / "fifo.tmp", logs / "fifo.log")  # the .log replaced by a FIFO after discovery
        peak = 0
        for i in range(1, 21):  # the well-behaved stream: every line within a second
            append(logs / "good.log", f"good {i}\n".encode())
            written = time.monotonic()
            await eventually(lambda n=i: len(recorder.lines("good")) == n + 1, limit=5, what=f"good {i}")
            assert time.monotonic() - written < 1.0, f"good {i} took {time.monotonic() - written:.2f}s"
            peak = max(peak, rss_bytes(pid))
            await asyncio.sleep(0.05)
        assert peak < 200 * 1024 * 1024, f"RSS {peak / 2**20:.0f} MiB"
        await eventually(lambda: any(r.get("msg", "").startswith("log file not read") for r in shipper.log()),
                         what="the FIFO refused")
        started = time.monotonic()
        assert await shipper.stop(limit=15) == 0
        assert time.monotonic() - started < 10
    assert recorder.lines("good") == [f"good {i}" for i in range(21)]
    assert recorder.lines("evil") == ["evil line"] and recorder.lines("evil2") == ["x"]
    assert recorder.lines("zero") == ["zero line"] and recorder.lines("fifo") == ["before"]
    for name in ("good", "evil", "evil2", "zero", "fifo"):
        assert recorder.eof(name), name
    assert "exit_code" not in recorder.batches("zero")[-1] and "exit_code" not in recorder.batches("evil")[-1]
    shipped = {b["container"] for b in recorder.accepted}
    assert shipped == {"good", "evil", "evil2", "zero", "fifo"}, shipped
    bodies = repr(recorder.requests)
    assert TOKEN not in bodies and CANARY not in bodies and "BLAST_LOGS" not in bodies



@pytest.fixture
def off_volume(volume: Path, tmp_path: Path) -> Iterator[Path]:
    """A folder on another filesystem (/dev/shm) holding a `.log`, and `logs/` a link to it."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == volume.stat().st_dev:
        pytest.skip("no second filesystem at /dev/shm")
    elsewhere = shm / f"hostile-{os.getpid()}-{tmp_path.name}"
    elsewhere.mkdir()
    (elsewhere / "secret.log").write_bytes(b"outside the volume\n")
    (volume / "logs").rmdir()
    os.symlink(elsewhere, volume / "logs")  # a job replaced logs/ with a link off the volume
    yield elsewhere
    shutil.rmtree(elsewhere)


async def test_a_logs_folder_leading_off_the_volume_is_not_read(volume: Path, recorder: Recorder,
                                                                 off_volume: Path) -> None:
    async with shipping(volume, [recorder.url]) as shipper:
        await eventually(lambda: any(r.get("reason") == "on another filesystem than the volume"
                                     for r in shipper.log()), what="the refusal")
        assert await shipper.stop() == 0
    assert all(not b["events"] for b in recorder.accepted)
    assert "outside the volume" not in repr(recorder.requests)
