"""Finalize in a child process (`finalize_process=child`, the default when the app opens its own store):
the same bytes as in the serving process, storage operations counted by the service, a killed child
answered with 503 and replaced, and no child outliving the service."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from agg_helpers import JOB, admin_headers, batch, dumps, events, ingest_headers, make_config
from aiohttp import web
from conftest import free_port

from aggregator.app import make_app
from aggregator.finalize.child import IO_THREADS, NICENESS
from aggregator.finalize.worker import FinalizeWorker
from aggregator.metrics import Metrics
from blastlogs.protocol import FINALIZE_PATH, INGEST_PATH

CHILD = "aggregator.finalize.child"


def children(pid: int) -> list[int]:
    """The finalize children of process `pid` (from /proc: real processes, nothing of ours asked)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and CHILD.encode() in cmdline:
            found.append(int(entry.name))
    return found


def nice_of(pid: int, tid: int | None = None) -> int:
    stat = Path(f"/proc/{pid}/task/{tid}/stat" if tid else f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[16])


def thread_ids(pid: int) -> list[int]:
    return [int(t.name) for t in Path(f"/proc/{pid}/task").iterdir()]


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def ingest_job(client: Any, pods: int = 3, lines: int = 40, eof: bool = True) -> None:
    for p in range(pods):
        for seq, part in enumerate((range(0, lines // 2), range(lines // 2, lines))):
            body = batch(pod=f"pod-{p}", seq=seq, eof=eof and seq == 1, evs=events(part, prefix=f"pod-{p}"))
            resp = await client.post(INGEST_PATH, data=dumps(body), headers=ingest_headers())
            assert resp.status == 200, await resp.text()


def store_files(root: Path) -> dict[str, bytes]:
    """Every file a finalize leaves outside staging (chunks, summary), by path."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and "_staging" not in p.parts}


def finalize_metric(text: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("blast_logs_aggregator_storage_operations_total{") and 'phase="finalize"' in line)


async def test_a_child_finalizes_with_the_serving_process_bytes_and_counts_its_operations(
        aiohttp_client: Any, tmp_path: Path) -> None:
    answers, artifacts = {}, {}
    for mode in ("child", "serving"):
        root = tmp_path / mode
        client = await aiohttp_client(make_app(make_config(store_url=f"file://{root}", finalize_process=mode)))
        await ingest_job(client)
        kids = children(os.getpid())
        assert len(kids) == (1 if mode == "child" else 0)
        for kid in kids:  # batch work: the serving process goes first when both want a CPU
            assert nice_of(kid) == min(nice_of(os.getpid()) + NICENESS, 19)
        resp = await client.post(FINALIZE_PATH.format(job_id=JOB), headers=admin_headers())
        assert resp.status == 200, await resp.text()
        answers[mode] = await resp.read()
        artifacts[mode] = store_files(root)
        for kid in kids:  # storage I/O at the service's priority, the finalize's CPU work (and loop) at the child's
            threads = {tid: nice_of(kid, tid) for tid in thread_ids(kid)}
            assert sum(n == nice_of(os.getpid()) for n in threads.values()) == IO_THREADS
            assert threads[kid] == nice_of(kid) and sum(n == nice_of(kid) for n in threads.values()) >= 2
        metrics = await (await client.get("/metrics")).text()
        assert finalize_metric(metrics) >= 5  # lock, lists, reads, chunk and summary puts: counted here
        await client.close()
        assert children(os.getpid()) == []  # the app's cleanup ended its child
    assert answers["child"] == answers["serving"]
    assert artifacts["child"] == artifacts["serving"] and len(artifacts["child"]) >= 2


async def finalized_by_another_child(client: Any, first: int) -> None:
    """After the child `first` died: pod-0's eof stored, and the next finalize answered by a new child."""
    resp = await client.post(INGEST_PATH, headers=ingest_headers(),
                             data=dumps(batch(pod="pod-0", seq=2, eof=True, evs=events(range(40, 41)))))
    assert resp.status == 200
    resp = await client.post(FINALIZE_PATH.format(job_id=JOB), headers=admin_headers())
    assert resp.status == 200, await resp.text()
    (second,) = children(os.getpid())
    assert second != first


async def test_a_killed_child_is_answered_503_and_the_next_finalize_starts_another(
        aiohttp_client: Any, tmp_path: Path) -> None:
    client = await aiohttp_client(make_app(make_config(store_url=f"file://{tmp_path}/store")))
    await ingest_job(client, eof=False)  # no eof: the finalize below waits for one in the child
    (first,) = children(os.getpid())
    waiting = asyncio.create_task(client.post(FINALIZE_PATH.format(job_id=JOB), headers=admin_headers(),
                                              data=dumps({"wait_seconds": 60})))
    await asyncio.sleep(0.5)
    assert not waiting.done()
    os.kill(first, signal.SIGKILL)
    resp = await asyncio.wait_for(waiting, 10)
    assert resp.status == 503
    assert (await resp.json()) == {"error": "unavailable", "detail": "finalize was interrupted; try again"}
    assert resp.headers["Retry-After"]
    await finalized_by_another_child(client, first)


async def test_a_child_that_stops_answering_is_killed_and_replaced(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await aiohttp_client(make_app(make_config(store_url=f"file://{tmp_path}/store",
                                                       finalize_child_timeout=2.0)))
    await ingest_job(client, eof=False)  # no eof: the finalize below waits for one in the child
    (first,) = children(os.getpid())
    waiting = asyncio.create_task(client.post(FINALIZE_PATH.format(job_id=JOB), headers=admin_headers(),
                                              data=dumps({"wait_seconds": 60})))
    await asyncio.sleep(2.5)  # beyond the timeout, while it says it is alive: kept
    assert not waiting.done() and alive(first)
    os.kill(first, signal.SIGSTOP)  # as stuck as a process gets: not a frame more
    stopped = time.monotonic()
    resp = await asyncio.wait_for(waiting, 15)
    assert 1.5 <= time.monotonic() - stopped < 10
    assert resp.status == 503
    assert (await resp.json())["error"] == "unavailable"
    for _ in range(50):
        if not alive(first):
            break
        await asyncio.sleep(0.1)
    assert not alive(first)  # killed, not left stopped
    await finalized_by_another_child(client, first)


def staged(root: Path) -> list[str]:
    return sorted(p.name for p in root.glob("*/execution-steps/_staging/*/*/*.json"))


async def test_ingest_side_compactions_run_in_the_child(aiohttp_client: Any, tmp_path: Path) -> None:
    """The service only schedules them: with its child stopped, ingests are still answered and nothing is
    compacted; once it runs again, the eof compaction lands, counted by the service."""
    root = tmp_path / "store"
    client = await aiohttp_client(make_app(make_config(store_url=f"file://{root}")))
    (kid,) = children(os.getpid())
    os.kill(kid, signal.SIGSTOP)
    try:
        await ingest_job(client, pods=1)  # two batches, the second with the eof: a compaction is due at once
        await asyncio.sleep(0.5)
        assert [n[:2] for n in staged(root)] == ["b-", "b-"]
    finally:
        os.kill(kid, signal.SIGCONT)
    for _ in range(100):
        if len(staged(root)) == 1:
            break
        await asyncio.sleep(0.05)
    (only,) = staged(root)
    assert only.startswith("c-00000002-") and only.endswith(".eof.json")
    metrics = await (await client.get("/metrics")).text()
    assert 'blast_logs_aggregator_compactions_total{outcome="done"} 1.0' in metrics
    compact_ops = {line.split("{", 1)[1].split('"')[1]: float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                   if line.startswith("blast_logs_aggregator_storage_operations_total{") and 'phase="compact"' in line}
    assert compact_ops == {"list": 1, "get": 2, "put": 1, "delete": 2}  # the child's, counted here


async def test_a_request_cancelled_before_the_child_starts_it_is_still_answered(tmp_path: Path) -> None:
    """The request and its cancel reach the child together (it was stopped meanwhile): the cancelled task never
    ran, yet the caller gets its answer and its cancellation completes."""
    worker = FinalizeWorker(make_config(store_url=f"file://{tmp_path}/store"), Metrics())
    await worker.start()
    try:
        (kid,) = children(os.getpid())
        for call in (partial(worker.compact, JOB, "pod-0", "blast"), partial(worker.finalize, JOB, 0.0, {})):
            os.kill(kid, signal.SIGSTOP)
            try:
                task = asyncio.create_task(call())
                await asyncio.sleep(0.1)  # its request is in the pipe
                task.cancel()
                await asyncio.sleep(0.1)  # and its cancel
            finally:
                os.kill(kid, signal.SIGCONT)
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(task), 10)
    finally:
        await worker.close()


async def test_stopping_the_service_cancels_the_childs_finalize_and_ends_the_child(tmp_path: Path) -> None:
    """As `serve` stops: in-flight handlers are cancelled after `shutdown_timeout`; the child's finalize is
    cancelled with them, and the child exits with the app's cleanup."""
    app = make_app(make_config(store_url=f"file://{tmp_path}/store"))
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as session:
        for p in range(2):
            resp = await session.post(url + INGEST_PATH, headers=ingest_headers(),
                                      data=dumps(batch(pod=f"pod-{p}", evs=events(range(5)))))
            assert resp.status == 200
        (child,) = children(os.getpid())
        waiting = asyncio.create_task(session.post(url + FINALIZE_PATH.format(job_id=JOB), headers=admin_headers(),
                                                   data=dumps({"wait_seconds": 60})))
        await asyncio.sleep(0.5)
        started = time.monotonic()
        await runner.cleanup()
        assert time.monotonic() - started < 10
        assert not alive(child)
        assert children(os.getpid()) == []
        await asyncio.gather(waiting, return_exceptions=True)


def test_a_child_ends_when_its_service_is_killed(start_aggregator: Any, tmp_path: Path) -> None:
    """kill -9 of the service: the child sees its stdin end and exits, leaving no orphan."""
    agg = start_aggregator()
    deadline = time.monotonic() + 20
    while not (kids := children(agg.proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(kids) == 1, agg.log_path.read_text()
    os.kill(agg.proc.pid, signal.SIGKILL)  # the service alone, not its process group
    agg.proc.wait(10)
    deadline = time.monotonic() + 10
    while alive(kids[0]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(kids[0])


@pytest.mark.parametrize("value", ["thread", "CHILD", ""])
def test_finalize_process_names_its_choices(value: str) -> None:
    from aggregator.config import AggregatorConfig
    from aggregator.errors import ConfigError

    env = {"BLAST_LOGS_SECRET": "s" * 16, "BLAST_LOGS_ADMIN_TOKEN": "a" * 16, "BLAST_LOGS_FINALIZE_PROCESS": value}
    if value == "":
        assert AggregatorConfig.from_env(env).finalize_process == "child"
        return
    with pytest.raises(ConfigError, match=r"BLAST_LOGS_FINALIZE_PROCESS.*child, serving"):
        AggregatorConfig.from_env(env)
