"""Truncation, rewriting and replacement never lose silently (issue 18): the real
`blast-log-shipper run` against a recording aggregator, and against the real aggregator to the
stored `at least` marker. Every line written is stored, or counted by exactly one report."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from conftest import TEST_ADMIN_TOKEN, TEST_SECRET
from shipper_helpers import Recorder, append, eventually, shipping

from aggregator.auth import job_token
from blastlogs.protocol import FINALIZE_PATH
from shipper.checkpoints import Checkpointer


def text(lines: list[str]) -> bytes:
    return "".join(s + "\n" for s in lines).encode()


def overwrite(path: Path, data: bytes, *, appended: bytes = b"", truncate: bool = False) -> None:
    """Change the file in place (same inode): append `appended`, truncate if told, write `data` at 0."""
    with open(path, "r+b") as f:
        f.seek(0, os.SEEK_END)
        f.write(appended)
        f.flush()
        if truncate:
            f.truncate(0)
        f.seek(0)
        f.write(data)


def reports(recorder: Recorder, container: str = "blast") -> list[dict[str, Any]]:
    return [b["dropped"] for b in recorder.batches(container) if b["dropped"]["lines"]]


async def test_truncated_and_written_past_or_rewritten_to_the_same_size(volume: Path, recorder: Recorder) -> None:
    path = volume / "logs" / "blast.log"
    old = [f"old line {i:04d}" for i in range(100)]
    unseen = [f"unseen {i:04d}" for i in range(50)]
    new = [f"new and longer line {i:04d}" for i in range(757)]
    path.write_bytes(text(old))
    # A long poll: the shipper sleeps at the end of the file while the test changes it.
    async with shipping(volume, [recorder.url], "--poll-interval", "2") as shipper:
        await eventually(lambda: recorder.lines("blast") == old, what="the old lines")
        # appended, then truncated and written past the position
        overwrite(path, text(new), appended=text(unseen), truncate=True)
        await eventually(lambda: recorder.lines("blast") == old + new, what="the new generation")
        (report,) = reports(recorder)
        assert report == {"off": len(text(old)), "lines": 1, "bytes": 0, "exact": False}
        same_size = [s.upper() for s in new]  # rewritten in place to exactly the same size
        overwrite(path, text(same_size))
        await eventually(lambda: recorder.lines("blast") == old + new + same_size, what="the rewrite")
        assert await shipper.stop() == 0
    first, second = reports(recorder)
    assert second == {"off": first["off"] + len(text(new)), "lines": 1, "bytes": 0, "exact": False}
    written = set(old + unseen + new + same_size)
    assert set(recorder.lines("blast")) <= written, "a half-line that was never written"
    assert recorder.eof("blast")


async def test_truncation_seen_by_size_reports_the_bytes_it_saw(volume: Path, recorder: Recorder) -> None:
    path = volume / "logs" / "blast.log"
    path.write_bytes(b"a\nb\npartial")
    async with shipping(volume, [recorder.url]) as shipper:
        await eventually(lambda: recorder.lines("blast") == ["a", "b"], what="two lines")
        path.write_bytes(b"c\n")  # truncated below the position
        await eventually(lambda: recorder.lines("blast")[-1:] == ["c"], what="the new generation")
        assert await shipper.stop() == 0
    # The unterminated "partial" was written: it is sent as the old generation's last line.
    assert recorder.lines("blast") == ["a", "b", "partial", "c"]
    assert reports(recorder) == [{"off": 11, "lines": 1, "bytes": 0, "exact": False}]


@pytest.mark.parametrize("change", ["truncate", "rename", "rewrite"])
async def test_changed_while_the_shipper_was_down(volume: Path, recorder: Recorder, change: str) -> None:
    path = volume / "logs" / "blast.log"
    before = [f"before {i:03d}" for i in range(100)]
    path.write_bytes(text(before))
    checkpoints = Checkpointer(volume / "state")
    async with shipping(volume, [recorder.url]) as shipper:
        await eventually(lambda: recorder.lines("blast") == before, what="the first lines")
        await eventually(lambda: (cp := checkpoints.load("blast")) is not None and cp.pos == path.stat().st_size,
                         what="the checkpoint")
        shipper.signal(signal.SIGKILL)
        await shipper.wait()
    assert checkpoints.load("blast").fp  # type: ignore[union-attr]
    append(path, text([f"while down {i:02d}" for i in range(50)]))
    after = [f"after {i:03d}" for i in range(30)]
    if change == "truncate":
        path.write_bytes(text(after))
    elif change == "rename":
        path.rename(volume / "logs" / "blast.old")
        path.write_bytes(text(after))
    else:  # same inode, same size (1,800 bytes), other bytes: only the fingerprint can tell
        assert path.stat().st_size == 1800
        after = [f"rewritten {i:07d}" for i in range(100)]  # 18 bytes each
        overwrite(path, text(after))
    async with shipping(volume, [recorder.url]) as shipper:
        await eventually(lambda: recorder.lines("blast")[len(before):] == after, what="the new file")
        assert await shipper.stop() == 0
    assert recorder.lines("blast") == before + after
    assert reports(recorder) == [{"off": len(text(before)), "lines": 1, "bytes": 0, "exact": False}]


async def test_an_inexact_report_is_stored_as_an_at_least_marker(volume: Path, start_aggregator: Any,
                                                               tmp_path: Path) -> None:
    job = "elb-trunc-1"
    agg = start_aggregator()
    env = {"token": job_token(TEST_SECRET, job), "job_id": job}
    path = volume / "logs" / "blast.log"
    path.write_bytes(b"one\ntwo\n")
    checkpoints = Checkpointer(volume / "state")
    async with shipping(volume, [agg.url], **env) as shipper:
        await eventually(lambda: (cp := checkpoints.load("blast")) is not None and cp.pos == 8, what="checkpoint")
        shipper.signal(signal.SIGKILL)
        await shipper.wait()
    path.write_bytes(b"three\n")
    async with shipping(volume, [agg.url], **env) as shipper:
        await shipper.started()
        assert await shipper.stop() == 0
    async with aiohttp.ClientSession() as http, http.post(
            agg.url + FINALIZE_PATH.format(job_id=job), data=b"{}",
            headers={"Authorization": f"Bearer {TEST_ADMIN_TOKEN}"}) as answer:
        assert answer.status == 200
    chunk = orjson.loads((tmp_path / "store" / job / "execution-steps" / "logs" / "running" / "0.json").read_bytes())
    assert [e["line"] for e in chunk["events"]] == [
        "one", "two", "[... at least 1 lines (0 bytes) dropped by the shipper ...]", "three"]
