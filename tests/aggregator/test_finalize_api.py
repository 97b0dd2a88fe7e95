"""POST /v1/jobs/{job_id}/finalize against make_app on a real store (local folder; Azurite when marked)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
from agg_helpers import (
    JOB,
    POD,
    admin_headers,
    batch,
    dumps,
    events,
    ingest_headers,
    on_request,
    read_tree,
)
from conftest import TEST_SECRET

from aggregator.auth import job_token
from aggregator.storage.layout import lock_key, logs_prefix, steps_prefix, summary_key
from blastlogs.protocol import FINALIZE_PATH

FINALIZE = f"/v1/jobs/{JOB}/finalize"


async def ingest(client: Any, body: dict[str, Any], job_id: str = JOB) -> None:
    r = await client.post("/v1/ingest", data=dumps(body), headers=ingest_headers(job_id))
    assert r.status == 200, await r.text()


async def finalize(client: Any, body: Any = None, status: int = 200) -> dict[str, Any]:
    data = b"" if body is None else dumps(body)
    r = await client.post(FINALIZE, data=data, headers=admin_headers())
    assert r.status == status, await r.text()
    doc: dict[str, Any] = await r.json()
    return doc


async def artifact_lines(store: Any, phase: str, job_id: str = JOB) -> list[str]:
    """Every line of our chunks of a phase, in chunk order."""
    prefix = f"{logs_prefix(job_id)}{phase}/"
    keys = sorted(await store.list_keys(prefix), key=lambda k: int(k.rsplit("/", 1)[1].split(".")[0]))
    lines: list[str] = []
    for key in keys:
        doc = orjson.loads(await store.get(key))
        lines += [e["line"] for e in doc["events"]]
    return lines


async def test_reformed_overlapping_batches_give_each_event_once(serve: Any, kit: Any) -> None:
    client = await serve()
    await ingest(client, batch(seq=0, evs=events(range(0, 5))))
    # After a shipper restart: other boundaries, later ts for the re-read lines.
    await ingest(client, batch(seq=1, evs=events(range(3, 8), ts=2000.0)))
    await ingest(client, batch(seq=2, evs=events(range(8, 10)), eof=True, exit_code=0))
    summary = await finalize(client)
    assert summary["complete"] is True and summary["incomplete_streams"] == []
    step = summary["steps"]["running"]
    assert step["lines"] == 10 and step["chunks"] == 1
    assert step["containers"] == [{"pod": POD, "container": "blast", "lines": 10, "exit_code": 0}]
    store = kit.inspector()
    assert await artifact_lines(store, "running") == [f"line {i}" for i in range(10)]
    chunk = orjson.loads(await store.get(f"{logs_prefix(JOB)}running/0.json"))
    assert chunk["job_id"] == JOB and chunk["phase"] == "running" and chunk["seq"] == 0
    # The copy with the lowest ts is kept for the overlap.
    assert [e["ts"] for e in chunk["events"][3:5]] == [1000.003, 1000.004]
    assert step["last_output"] == "\n".join([f"--- {POD}/blast ---", *[f"line {i}" for i in range(10)],
                                             "[exit code 0]"])


async def test_finalize_twice_gives_identical_bytes(serve: Any, kit: Any) -> None:
    client = await serve(chunk_events=7)
    await ingest(client, batch(seq=0, evs=events(range(20))))
    await ingest(client, batch(container="results-export", seq=0, evs=events(range(5)), eof=True))
    r1 = await client.post(FINALIZE, headers=admin_headers())
    body1 = await r1.read()
    store = kit.inspector()
    tree1 = await read_tree(store, steps_prefix(JOB))
    r2 = await client.post(FINALIZE, headers=admin_headers())
    body2 = await r2.read()
    tree2 = await read_tree(store, steps_prefix(JOB))
    assert r1.status == r2.status == 200
    assert body1 == body2 == tree1[summary_key(JOB)]
    assert tree1 == tree2
    summary = orjson.loads(body1)
    assert summary["complete"] is False
    assert summary["incomplete_streams"] == [{"pod": POD, "container": "blast"}]
    assert sorted(summary["steps"]) == ["exporting_results", "running"]
    assert summary["steps"]["running"]["chunks"] == 4  # 25 events by 7
    assert len(await artifact_lines(store, "running")) == 25


async def test_foreign_chunks_are_left_alone_and_ours_numbered_after(serve: Any, kit: Any) -> None:
    store = kit.inspector()
    foreign = b'{"written": "by someone else"}'
    await store.put(f"{logs_prefix(JOB)}running/0.json", foreign)
    client = await serve()
    await ingest(client, batch(evs=events(range(3)), eof=True))
    summary = await finalize(client)
    assert summary["steps"]["running"]["chunks"] == 1
    keys = await store.list_keys(logs_prefix(JOB))
    assert keys == [f"{logs_prefix(JOB)}running/0.json", f"{logs_prefix(JOB)}running/1.json"]
    assert await store.get(f"{logs_prefix(JOB)}running/0.json") == foreign
    ours = orjson.loads(await store.get(f"{logs_prefix(JOB)}running/1.json"))
    assert ours["seq"] == 1
    # Again: still 1.json, the foreign chunk untouched.
    await finalize(client)
    assert await store.list_keys(logs_prefix(JOB)) == keys
    # Another writer adds 4.json later: ours move after it and the old ones go.
    await store.put(f"{logs_prefix(JOB)}running/4.json", foreign)
    await finalize(client)
    assert await store.list_keys(logs_prefix(JOB)) == [
        f"{logs_prefix(JOB)}running/0.json", f"{logs_prefix(JOB)}running/4.json",
        f"{logs_prefix(JOB)}running/5.json"]
    assert await store.get(f"{logs_prefix(JOB)}running/4.json") == foreign


async def test_longer_existing_last_output_is_kept(serve: Any) -> None:
    client = await serve()
    await ingest(client, batch(evs=events(range(2)), eof=True))
    longer = "an earlier, longer summary\n" * 20
    summary = await finalize(client, {"existing_last_output": {"running": longer, "nope": "x"}})
    assert summary["steps"]["running"]["last_output"] == longer
    assert "nope" not in summary["steps"]
    summary = await finalize(client, {"existing_last_output": {"running": "short"}})
    assert summary["steps"]["running"]["last_output"].startswith(f"--- {POD}/blast ---")


async def test_finalize_waits_for_eof(serve: Any) -> None:
    finalizing = asyncio.Event()
    client = await serve(app_hook=lambda app: on_request(app, FINALIZE_PATH.format(job_id=JOB), finalizing))
    await ingest(client, batch(evs=events(range(2))))
    summary = await finalize(client, {"wait_seconds": 0})
    assert summary["complete"] is False
    finalizing.clear()

    async def late_eof() -> None:
        await finalizing.wait()  # the waiting finalize is being handled: only now does the eof arrive
        await ingest(client, batch(seq=1, evs=events([2]), eof=True))

    task = asyncio.ensure_future(late_eof())
    summary = await finalize(client, {"wait_seconds": 30})
    await task
    assert summary["complete"] is True and summary["steps"]["running"]["lines"] == 3


async def test_wait_is_capped_by_config(serve: Any) -> None:
    client = await serve(finalize_max_wait=0.2)
    await ingest(client, batch(evs=events([0])))
    started = time.monotonic()
    summary = await finalize(client, {"wait_seconds": 3600})
    assert summary["complete"] is False
    assert time.monotonic() - started < 60  # not the hour it asked for


async def test_unknown_job_is_404(serve: Any) -> None:
    client = await serve()
    doc = await finalize(client, {"wait_seconds": 5}, status=404)
    assert doc["error"] == "not_found"


@pytest.mark.parametrize("headers,status", [
    ({}, 401),
    ({"Authorization": "Bearer wrong-admin-token"}, 401),
    ({"Authorization": f"Bearer {job_token(TEST_SECRET, JOB)}"}, 403),
])
async def test_finalize_tokens(serve: Any, headers: dict[str, str], status: int) -> None:
    client = await serve()
    await ingest(client, batch(evs=events([0]), eof=True))
    r = await client.post(FINALIZE, headers=headers)
    assert r.status == status


@pytest.mark.parametrize("path,body", [
    ("/v1/jobs/-bad/finalize", b""),
    ("/v1/jobs/" + "a" * 129 + "/finalize", b""),
    (FINALIZE, b"{oops"),
    (FINALIZE, b"[]"),
    (FINALIZE, dumps({"wait_seconds": -1})),
    (FINALIZE, dumps({"wait_seconds": True})),
    (FINALIZE, dumps({"wait_seconds": "10"})),
    (FINALIZE, dumps({"existing_last_output": ["x"]})),
    (FINALIZE, dumps({"existing_last_output": {"running": 5}})),
])
async def test_finalize_bad_requests_are_400(serve: Any, path: str, body: bytes) -> None:
    client = await serve()
    await ingest(client, batch(evs=events([0]), eof=True))
    r = await client.post(path, data=body, headers=admin_headers())
    assert r.status == 400, await r.text()
    assert (await r.json())["error"] == "bad_request"


async def test_a_stale_lock_is_taken_over_and_a_live_one_waited_for(serve: Any, kit: Any) -> None:
    store = kit.inspector()
    client = await serve(lock_wait=0.3, retry_after=5)
    await ingest(client, batch(evs=events([0]), eof=True))
    await store.put(lock_key(JOB), orjson.dumps({"owner": "dead-replica", "expires": time.time() - 1}))
    await finalize(client)
    assert await store.get(lock_key(JOB)) is None  # taken over, then released
    await store.put(lock_key(JOB), orjson.dumps({"owner": "busy-replica", "expires": time.time() + 600}))
    r = await client.post(FINALIZE, headers=admin_headers())
    assert r.status == 503 and r.headers["Retry-After"] == "5"
    assert (await r.json())["error"] == "busy"
    await store.delete(lock_key(JOB))
    await finalize(client)


def finalize_lists(text: str) -> float:
    """Lists a finalize made, by the service's storage-operation counter."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith('blast_logs_aggregator_storage_operations_total{op="list",phase="finalize"}'))


async def test_staging_is_listed_once_unless_the_lock_was_waited_for(serve: Any, kit: Any) -> None:
    """A finalize that gets the lock at once builds on the listing it waited for eof with (on Azurite one
    list of a big job's staging holds every other request for a fraction of a second); one that waited for
    another finalize lists again, and so sees what was staged meanwhile."""
    store = kit.inspector()
    client = await serve(lock_wait=10.0)
    await ingest(client, batch(pod="pod-a", evs=events([0]), eof=True))
    await finalize(client)
    once = finalize_lists(await (await client.get("/metrics")).text())
    assert once == (3 if kit.kind == "local" else 2)  # staging, logs/ (and the local store's temp files)
    await store.put(lock_key(JOB), orjson.dumps({"owner": "busy-replica", "expires": time.time() + 600}))
    waiting = asyncio.create_task(finalize(client))
    for _ in range(100):  # it listed staging (pod-a only) and waits for the lock
        if finalize_lists(await (await client.get("/metrics")).text()) > once:
            break
        await asyncio.sleep(0.02)
    await ingest(client, batch(pod="pod-b", evs=events([0, 1]), eof=True))
    await store.delete(lock_key(JOB))
    summary = await asyncio.wait_for(waiting, 20)
    assert summary["steps"]["running"]["lines"] == 3  # pod-b's two lines too: listed again under the lock
    assert finalize_lists(await (await client.get("/metrics")).text()) == once + once + 1


async def test_many_events_are_chunked_in_order(serve: Any, kit: Any) -> None:
    client = await serve()
    await ingest(client, batch(seq=0, evs=events(range(0, 1000))))
    await ingest(client, batch(seq=1, evs=events(range(1000, 1250)), eof=True))
    summary = await finalize(client)
    assert summary["steps"]["running"]["chunks"] == 13
    store = kit.inspector()
    assert await artifact_lines(store, "running") == [f"line {i}" for i in range(1250)]
    sizes = [len(orjson.loads(await store.get(f"{logs_prefix(JOB)}running/{i}.json"))["events"])
             for i in range(13)]
    assert sizes == [100] * 12 + [50]


async def test_finalize_metrics(serve: Any) -> None:
    client = await serve()
    await ingest(client, batch(evs=events([0]), eof=True))
    await finalize(client)
    text = await (await client.get("/metrics")).text()
    assert 'blast_logs_aggregator_finalize_duration_seconds_count{outcome="complete"} 1.0' in text
    assert 'route="/v1/jobs/{job_id}/finalize",status="200"' in text


def test_manifest_codec_and_chunk_numbering() -> None:
    from aggregator.finalize.manifest import decode_manifest, encode_manifest, first_free_seqs

    assert encode_manifest(["b", "a"]) == b'{"v":1,"chunks":["a","b"]}'
    assert decode_manifest(encode_manifest({"x", "y"})) == {"x", "y"}
    assert decode_manifest(None) == set() and decode_manifest(b"not json") == set()
    prefix = logs_prefix(JOB)
    listed = [f"{prefix}running/0.json", f"{prefix}running/4.json", f"{prefix}setup/2.json",
              f"{prefix}running/odd.txt", f"{prefix}deep/a/1.json", f"{prefix}setup/9.json"]
    assert first_free_seqs(JOB, listed, ours={f"{prefix}setup/9.json"}) == {"running": 5, "setup": 3}


async def test_job_lock_excludes_then_releases_and_takes_over_a_stale_one(local_kit: Any) -> None:
    from aggregator.errors import LockBusy
    from aggregator.finalize.lock import JobLock

    store = local_kit.inspector()
    first = JobLock(store, JOB, ttl=60, wait=5, poll=0.01)
    async with first:
        assert orjson.loads(await store.get(lock_key(JOB)))["owner"] == first.owner
        with pytest.raises(LockBusy):
            async with JobLock(store, JOB, ttl=60, wait=0.05, poll=0.01):
                pass
    assert await store.get(lock_key(JOB)) is None  # released
    await store.put(lock_key(JOB), orjson.dumps({"owner": "dead-replica", "expires": 1.0}))
    taker = JobLock(store, JOB, ttl=60, wait=5, poll=0.01)
    async with taker:
        assert orjson.loads(await store.get(lock_key(JOB)))["owner"] == taker.owner
    assert await store.get(lock_key(JOB)) is None
