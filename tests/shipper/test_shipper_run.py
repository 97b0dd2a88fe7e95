"""`blast-log-shipper run` as a real process against a recording aggregator stand-in."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp
from conftest import free_port
from shipper_helpers import POD, Recorder, append, eventually, shipping, start_shipper

from blastlogs.protocol import MAX_LINE_CHARS
from shipper.checkpoints import Checkpointer


async def test_late_files_first_batch_drain_with_unterminated_line(volume: Path, recorder: Recorder) -> None:
    logs = volume / "logs"
    (logs / "blast.log").write_bytes(b"one\ntwo\n")
    async with shipping(volume, [recorder.url]) as shipper:
        await eventually(lambda: recorder.lines("blast") == ["one", "two"], what="blast lines")
        assert recorder.batches("blast")[0]["seq"] == 0
        assert (volume / "bin" / "logwrap").exists()
        # A file that appears later: its first batch comes at once, with no events.
        (logs / "results-export.log").write_bytes(b"")
        await eventually(lambda: recorder.batches("results-export"), what="first empty batch")
        assert recorder.batches("results-export")[0]["events"] == []
        append(logs / "results-export.log", b"exporting\npartial without newline")
        (logs / "results-export.exit").write_text("7\n")
        await eventually(lambda: recorder.lines("results-export") == ["exporting"], what="late file")
        assert await shipper.stop() == 0
    assert recorder.lines("results-export") == ["exporting", "partial without newline"]
    for container in ("blast", "results-export"):
        batches = recorder.sent(container)
        assert [b["seq"] for b in batches] == list(range(len(batches)))
        assert batches[-1]["eof"] is True and sum(b["eof"] for b in batches) == 1
    assert recorder.batches("results-export")[-1]["exit_code"] == 7
    assert "exit_code" not in recorder.batches("blast")[-1]
    offs = [e["off"] for b in recorder.sent("results-export") for e in b["events"]]
    assert offs == [0, len(b"exporting\n")]


async def test_long_line_and_invalid_utf8(volume: Path, recorder: Recorder) -> None:
    path = volume / "logs" / "blast.log"
    big = 50 * 1024 * 1024
    block = ("é" * 512).encode() + b"x" * 1024  # 1,536 chars in 2,048 bytes
    path.write_bytes(b"before\n")
    append(path, block * (big // len(block)) + b"\nafter \xff\xfe bad\n")
    async with shipping(volume, [recorder.url]) as shipper:
        await eventually(lambda: len(recorder.lines("blast")) == 3, limit=60, what="three lines")
        assert await shipper.stop() == 0
    before, long, after = recorder.lines("blast")
    assert before == "before"
    assert len(long) == MAX_LINE_CHARS
    total_chars = (big // 2048) * 1536
    kept = long[: long.index(" [... ")]
    assert long.endswith(f" [... {total_chars - len(kept)} chars cut]")
    assert kept.startswith("é" * 512 + "x")
    assert after.startswith("after ") and after.endswith(" bad") and "\ufffd" in after
    offs = [e["off"] for b in recorder.sent("blast") for e in b["events"]]
    assert offs == [0, 7, 7 + (big // 2048) * 2048 + 1]


async def test_budget_keeps_a_tail_and_reports_dropped(volume: Path, recorder: Recorder) -> None:
    path = volume / "logs" / "blast.log"
    lines = [f"line {i:05d}" for i in range(5000)]
    path.write_bytes("".join(s + "\n" for s in lines).encode())
    async with shipping(volume, [recorder.url], "--stream-budget-bytes", "10000",
                        "--tail-ring-bytes", "5000") as shipper:
        await eventually(lambda: any(r.get("msg") == "stream budget reached; keeping only a tail from here"
                                     for r in shipper.log()), what="the budget reached")
        assert await shipper.stop() == 0
    got = recorder.lines("blast")
    head = 10000 // 11 + (1 if 10000 % 11 else 0)  # lines until the budget is reached
    assert got[:head] == lines[:head]
    tail = got[head:]
    assert tail == lines[-len(tail):] and 0 < len(tail) < 200
    reports = [b["dropped"] for b in recorder.batches("blast") if b["dropped"]["lines"]]
    assert len(reports) == 1
    (report,) = reports
    assert report["lines"] == 5000 - head - len(tail)
    assert report["off"] == head * 11 and report["bytes"] == report["lines"] * 11
    assert recorder.batches("blast")[-1]["eof"]


async def test_retry_after_and_failover(volume: Path, recorder: Recorder) -> None:
    (volume / "logs" / "blast.log").write_bytes(b"a\nb\n")
    recorder.script = [503, 429, "drop"]
    recorder.retry_after = "1"
    dead = "http://127.0.0.1:9"  # nothing listens on the discard port
    async with shipping(volume, [dead, recorder.url]) as shipper:
        start = time.monotonic()
        await eventually(lambda: recorder.lines("blast") == ["a", "b"], what="delivery after failures")
        assert await shipper.stop() == 0
    times = [t for t, _, _ in recorder.requests]
    # Retry-After: 1 after the 503 and after the 429: the next attempts waited at least that.
    assert times[1] - times[0] >= 0.95 and times[2] - times[1] >= 0.95
    assert times[0] >= start
    log = shipper.log()
    assert any(r.get("url") == dead for r in log), "the dead URL was tried and logged"
    assert all("not-checked" not in str(r) for r in log), "the token is never logged"


async def test_rejected_batches_are_kept_and_split_on_413(volume: Path, recorder: Recorder) -> None:
    lines = [f"row {i}" for i in range(300)]
    (volume / "logs" / "blast.log").write_bytes("".join(s + "\n" for s in lines).encode())
    recorder.script = [200, 400, 413, 413]
    async with shipping(volume, [recorder.url], "--reject-backoff", "0.5") as shipper:
        await eventually(lambda: recorder.lines("blast") == lines, what="all lines after 400 and 413")
        assert await shipper.stop() == 0
    rejected = [r for r in shipper.log() if r.get("status") == 400]
    assert rejected and rejected[0]["level"] == "error"
    sizes = [len(b["events"]) for _, action, b in recorder.requests if b["events"]]
    assert sizes[:3] == [300, 300, 150], sizes  # rejected as a whole, then halved, halved again


async def test_unreachable_aggregator_exits_nonzero_naming_streams(volume: Path) -> None:
    (volume / "logs" / "blast.log").write_bytes(b"x\n" * 10)
    (volume / "logs" / "get-blastdb.log").write_bytes(b"y\n")
    shipper = await start_shipper(volume, ["http://127.0.0.1:9"], "--grace", "2")
    await shipper.started()
    await eventually(lambda: {r.get("stream") for r in shipper.log() if r.get("msg", "").startswith("send failed")}
                     == {f"{POD}/blast", f"{POD}/get-blastdb"}, what="both streams trying to send")
    start = time.monotonic()
    shipper.signal(signal.SIGTERM)
    rc = await shipper.wait(limit=20)
    elapsed = time.monotonic() - start
    assert rc == 3
    assert elapsed < 10
    text = shipper.log_path.read_text()
    assert "blast: delivered up to off 0" in text and "offsets 0..20" in text
    assert "get-blastdb: delivered up to off 0" in text


async def test_kill9_restart_with_a_writer_appending(volume: Path, recorder: Recorder) -> None:
    path = volume / "logs" / "blast.log"
    stop = asyncio.Event()
    written: list[str] = []

    async def writer() -> None:
        i = 0
        while not stop.is_set():
            chunk = [f"w {i + k} " + "z" * (i % 50) for k in range(200)]
            append(path, "".join(s + "\n" for s in chunk).encode())
            written.extend(chunk)
            i += 200
            await asyncio.sleep(0.01)

    path.write_bytes(b"")
    task = asyncio.create_task(writer())
    first = await start_shipper(volume, [recorder.url])
    await eventually(lambda: len(recorder.lines("blast")) > 2000, what="first shipper progress")
    first.proc.kill()
    await first.wait()
    down = len(written)
    await eventually(lambda: len(written) > down + 1000, what="lines written while no shipper runs")
    second = await start_shipper(volume, [recorder.url])
    await second.started()  # the first may have shipped enough already: SIGTERM must find the handler
    await eventually(lambda: len(recorder.lines("blast")) > len(written) // 2 + 1000, what="second progress")
    stop.set()
    await task
    assert await second.stop() == 0
    assert recorder.lines("blast") == written
    assert recorder.eof("blast")
    # After the eof ack the checkpoint says so, and a restart sends nothing more.
    cp = Checkpointer(volume / "state").load("blast")
    assert cp is not None and cp.eof
    before = len(recorder.requests)
    third = await start_shipper(volume, [recorder.url])
    await third.started()
    await eventually(lambda: any(r.get("msg") == "stream found" for r in third.log()), what="the stream found")
    assert await third.stop() == 0
    assert len(recorder.requests) == before


async def test_metrics_and_health(volume: Path, recorder: Recorder) -> None:
    (volume / "logs" / "blast.log").write_bytes(b"password=hunter2 x\nplain\n")
    port = free_port()
    async with shipping(volume, [recorder.url], "--metrics-port", str(port)) as shipper:
        await eventually(lambda: len(recorder.lines("blast")) == 2, what="lines")
        await shipper.started()
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/healthz") as resp:
                assert resp.status == 200 and (await resp.json())["streams"] == 1
            async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
                text = await resp.text()
        assert 'blast_logs_shipper_lines_read_total{container="blast"} 2.0' in text
        assert 'blast_logs_shipper_lines_shipped_total{container="blast"} 2.0' in text
        assert 'blast_logs_shipper_redacted_total{kind="password"} 1.0' in text
        assert "hunter2" not in recorder.lines("blast")[0]
        assert "blast_logs_shipper_lag_bytes" in text and "blast_logs_shipper_queue_bytes" in text
        assert await shipper.stop() == 0


async def test_second_signal_exits_at_once(volume: Path) -> None:
    (volume / "logs" / "blast.log").write_bytes(b"x\n")
    shipper = await start_shipper(volume, ["http://127.0.0.1:9"], "--grace", "60")
    await shipper.started()
    shipper.signal(signal.SIGTERM)
    await eventually(lambda: any(r.get("msg") == "draining" for r in shipper.log()), what="drain")
    shipper.signal(signal.SIGTERM)
    assert await shipper.wait(limit=20) == 128 + signal.SIGTERM


async def test_a_restarted_container_reports_no_stale_exit_code(volume: Path, recorder: Recorder) -> None:
    logs = volume / "logs"
    (logs / "blast.log").write_bytes(b"first run\n")
    (logs / "blast.exit").write_text("3\n")
    async with shipping(volume, [recorder.url]) as shipper:
        await eventually(lambda: any(b.get("exit_code") == 3 for b in recorder.batches("blast")),
                         what="first run's exit code")
        # The container restarts: logwrap removes the exit file and appends to the log.
        (logs / "blast.exit").unlink()
        append(logs / "blast.log", b"second run\n")
        await eventually(lambda: recorder.lines("blast") == ["first run", "second run"], what="2nd run")
        assert await shipper.stop() == 0
    after = [b for b in recorder.batches("blast") if any(e["line"] == "second run" for e in b["events"])]
    assert after and all(b.get("exit_code") is None for b in after)
    assert recorder.batches("blast")[-1]["eof"] is True
    assert recorder.batches("blast")[-1].get("exit_code") is None


def _catches(pid: int, sig: int) -> bool:
    """Whether process `pid` has a handler for `sig` (SigCgt in /proc/PID/status)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(mask & (1 << (sig - 1)))


async def test_a_sigterm_while_starting_up_still_drains(volume: Path, recorder: Recorder) -> None:
    (volume / "logs" / "blast.log").write_bytes(b"written before the sidecar started\n")
    async with shipping(volume, [recorder.url]) as shipper:
        # The moment the first handler exists, long before the event loop runs: still starting.
        await eventually(lambda: _catches(shipper.proc.pid, signal.SIGTERM) or shipper.proc.returncode,
                         limit=20, what="early handler")
        assert not any(r.get("msg") == "shipper started" for r in shipper.log())
        assert await shipper.stop() == 0
    assert recorder.lines("blast") == ["written before the sidecar started"]
    assert recorder.batches("blast")[-1]["eof"] is True
