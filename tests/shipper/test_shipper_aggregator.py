"""The shipper against the real aggregator (file store): kill -9 and restart mid-stream with a writer
still appending, then SIGTERM and finalize: every written line is in the artifacts exactly once."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import orjson
from conftest import TEST_ADMIN_TOKEN, TEST_SECRET
from shipper_helpers import JOB_ID, append, eventually, start_shipper

from aggregator.auth import job_token
from aggregator.client import finalize


def artifact_lines(store: Path, phase: str) -> list[tuple[str, str]]:
    folder = store / JOB_ID / "execution-steps" / "logs" / phase
    events: list[tuple[str, str]] = []
    for path in sorted(folder.glob("*.json"), key=lambda p: int(p.stem)):
        body: dict[str, Any] = orjson.loads(path.read_bytes())
        events.extend((e["container"], e["line"]) for e in body["events"])
    return events


async def test_kill9_restart_then_drain_into_real_aggregator(tmp_path: Path, start_aggregator: Any) -> None:
    store = tmp_path / "store"
    agg = start_aggregator(f"file://{store}")
    volume = tmp_path / "vol"
    (volume / "logs").mkdir(parents=True)
    path = volume / "logs" / "blast.log"
    path.write_bytes(b"")
    (volume / "logs" / "get-blastdb.log").write_bytes(b"downloading\ndone\n")
    written: list[str] = []
    stop = asyncio.Event()

    async def writer() -> None:
        i = 0
        while not stop.is_set() and i < 8000:
            chunk = [f"query {i + k} hit {'é' * (k % 7)} e=1e-{k % 30}" for k in range(100)]
            append(path, "".join(s + "\n" for s in chunk).encode())
            written.extend(chunk)
            i += 100
            await asyncio.sleep(0.01)

    token = job_token(TEST_SECRET, JOB_ID)
    task = asyncio.create_task(writer())
    first = await start_shipper(volume, [agg.url], token=token)
    await eventually(lambda: (volume / "state" / "blast.json").exists() and len(written) > 2000,
                     what="first checkpoint")
    first.proc.kill()
    await first.wait()
    second = await start_shipper(volume, [agg.url], token=token)
    await task
    await second.started()
    second.signal(signal.SIGTERM)
    assert await second.wait() == 0, second.log_path.read_text()[-2000:]

    result = await finalize(agg.url, TEST_ADMIN_TOKEN, JOB_ID, wait_seconds=5)
    assert result.ok, result.error
    assert result.body is not None and result.body["complete"] is True
    events = artifact_lines(store, "running")
    assert [line for c, line in events if c == "blast"] == written
    assert [line for c, line in artifact_lines(store, "staging_db")] == ["downloading", "done"]
