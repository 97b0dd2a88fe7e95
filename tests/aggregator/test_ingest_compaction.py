"""Ingest-side compaction (issue 16): a replica compacts a stream in the background at its eof (and
every `COMPACT_BATCHES` batches), never failing or delaying the ingest; a finalize that finds a listed
batch deleted by it lists the stream again; the artifacts' bytes stay those of an uncompacted job."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from agg_helpers import JOB, POD, admin_headers, batch, dumps, events, ingest_headers, make_config, read_tree
from test_staging_cleanup import artifacts, batches, staged

from aggregator.app import METRICS, make_app
from aggregator.compaction import Compactor
from aggregator.finalize.job import finalize_job
from aggregator.metrics import Metrics
from aggregator.model import StoredBatch
from aggregator.storage import LocalStore
from aggregator.storage.layout import logs_prefix, staging_prefix


async def staged_names(store: LocalStore) -> list[str]:
    """The staged batches' and compacted objects' names (not the manifest's)."""
    names = (k.rsplit("/", 1)[1] for k in await store.list_keys(staging_prefix(JOB)))
    return sorted(n for n in names if n.startswith(("b-", "c-")))


async def clean_run(tmp_path: Path, bs: list[StoredBatch]) -> dict[str, bytes]:
    """The artifacts of the same batches finalized with no compaction before."""
    store = LocalStore(tmp_path / "clean")
    await staged(store, bs)
    await finalize_job(store, make_config(), JOB, wait_seconds=0, existing_last_output={})
    return await artifacts(store)


def compactor(store: LocalStore, **cfg: Any) -> Compactor:
    return Compactor(make_config(**cfg), Metrics(), lambda: store)


async def test_compaction_at_ingest_leaves_one_object_and_finalize_gives_the_same_bytes(tmp_path: Path) -> None:
    bs = batches("blast", 8) + batches("vmtouch", 3)
    store = LocalStore(tmp_path / "s")
    await staged(store, bs)
    c = compactor(store)
    await c.compact(JOB, POD, "blast")
    await c.compact(JOB, POD, "vmtouch")
    names = await staged_names(store)
    assert len(names) == 2 and all(n.startswith("c-") and n.endswith(".eof.json") for n in names)
    await finalize_job(store, make_config(), JOB, wait_seconds=0, existing_last_output={})
    assert await artifacts(store) == await clean_run(tmp_path, bs)


class CompactingMidRead(LocalStore):
    """A store whose first read of a staged batch lets an ingest-side compaction of that stream run to
    its end (compacted object written, covered batches deleted) before the read happens: the read
    finds the batch gone, as when another replica compacts between a finalize's listing and its reads."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.compactor: Compactor | None = None
        self.raced = 0

    async def get(self, key: str) -> bytes | None:
        c = self.compactor
        if c is not None and "/b-" in key:
            self.compactor = None
            pod, container = key.split("/")[-3:-1]
            await c.compact(JOB, pod, container)
            self.raced += 1
        return await super().get(key)


async def test_finalize_lists_again_when_a_compaction_deletes_what_it_listed(tmp_path: Path) -> None:
    bs = batches("blast", 6)
    store = CompactingMidRead(tmp_path / "s")
    await staged(store, bs)
    store.compactor = compactor(store)
    await finalize_job(store, make_config(), JOB, wait_seconds=0, existing_last_output={})
    assert store.raced == 1
    assert await artifacts(store) == await clean_run(tmp_path, bs)
    assert len(await staged_names(store)) == 1, await staged_names(store)


async def test_finalize_pass_two_lists_again_when_its_sources_were_compacted(tmp_path: Path) -> None:
    """Pass one read the batches (no compaction: one per stream), then an ingest-side compaction replaced
    them; pass two (entries not cached) reads the compacted object instead."""
    from aggregator.finalize import job

    bs = batches("blast", 1) + batches("vmtouch", 1)
    extra = StoredBatch(JOB, POD, "blast", "running", 1, False, None, None, ((99, 1099.0, "late"),))
    store = LocalStore(tmp_path / "s")
    await staged(store, bs)
    real_scan = job.scan_streams

    async def scan_then_compact(*a: Any) -> Any:
        found = await real_scan(*a)
        for s in found.values():
            s.entries = None  # as for a job too big to cache
        await staged(store, [extra])  # a duplicate-free late batch, then the compaction covering both
        await compactor(store).compact(JOB, POD, "blast")
        return found

    job.scan_streams = scan_then_compact  # type: ignore[assignment]
    try:
        await finalize_job(store, make_config(), JOB, wait_seconds=0, existing_last_output={})
    finally:
        job.scan_streams = real_scan  # type: ignore[assignment]
    names = await staged_names(store)
    assert any(n.startswith("c-") for n in names) and not any(n.startswith("b-") and "blast" in n for n in names)
    tree = await artifacts(store)
    assert b"blast 0" in b"".join(tree.values())


async def test_retention_all_keeps_the_batches(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    await staged(store, batches("blast", 4))
    await compactor(store, staging_retention="all").compact(JOB, POD, "blast")
    names = await staged_names(store)
    assert sum(n.startswith("b-") for n in names) == 4 and sum(n.startswith("c-") for n in names) == 1


async def wait_for(pred: Any, seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.02)):
        if await pred():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


async def test_ingest_compacts_at_eof_and_every_n_batches(aiohttp_client: Any, tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    app = make_app(make_config(compact_batches=3), store=store)
    client = await aiohttp_client(app)
    for seq in range(3):
        r = await client.post("/v1/ingest", data=dumps(batch(seq=seq, evs=events(range(seq * 2, seq * 2 + 2)))),
                              headers=ingest_headers())
        assert r.status == 200

    async def compacted_to_one() -> bool:
        names = await staged_names(store)
        return len(names) == 1 and names[0].startswith("c-00000003-")

    await wait_for(compacted_to_one)  # three new batches: compacted without an eof
    r = await client.post("/v1/ingest", data=dumps(batch(seq=3, eof=True, exit_code=0, evs=events([6]))),
                          headers=ingest_headers())
    assert r.status == 200

    async def eof_compacted() -> bool:
        names = await staged_names(store)
        return len(names) == 1 and names[0].startswith("c-00000004-") and names[0].endswith(".eof.json")

    await wait_for(eof_compacted)
    r = await client.post(f"/v1/jobs/{JOB}/finalize", headers=admin_headers(), json={"wait_seconds": 0})
    assert r.status == 200 and (await r.json())["complete"]
    metrics = app[METRICS]
    assert metrics.compactions.labels("done")._value.get() == 2
    assert metrics.storage_operations.labels("get", "finalize")._value.get() >= 1


class FailingCompactedPuts(LocalStore):
    async def put(self, key: str, data: bytes, *, overwrite: bool = True) -> bool:
        if "/c-" in key:
            raise OSError("disk says no")
        return await super().put(key, data, overwrite=overwrite)

    async def put_parts(self, key: str, parts: Sequence[bytes | memoryview], *, overwrite: bool = True) -> bool:
        return await self.put(key, b"".join(parts), overwrite=overwrite)  # a compaction's write, as a put


async def test_a_failing_compaction_never_fails_the_ingest(aiohttp_client: Any, tmp_path: Path) -> None:
    store = FailingCompactedPuts(tmp_path / "s")
    app = make_app(make_config(), store=store)
    client = await aiohttp_client(app)
    for seq in range(2):
        r = await client.post("/v1/ingest", data=dumps(batch(seq=seq, eof=seq == 1, evs=events([seq]))),
                              headers=ingest_headers())
        assert r.status == 200
    metrics = app[METRICS]

    async def counted() -> bool:
        return bool(metrics.compactions.labels("error")._value.get() == 1)

    await wait_for(counted)
    assert len(await staged_names(store)) == 2  # the batches stay for finalize


class SlowCompactedPuts(LocalStore):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.started = asyncio.Event()

    async def put(self, key: str, data: bytes, *, overwrite: bool = True) -> bool:
        if "/c-" in key:
            self.started.set()
            await asyncio.sleep(30)
        return await super().put(key, data, overwrite=overwrite)

    async def put_parts(self, key: str, parts: Sequence[bytes | memoryview], *, overwrite: bool = True) -> bool:
        return await self.put(key, b"".join(parts), overwrite=overwrite)  # a compaction's write, as a put


async def test_shutdown_cancels_running_compactions(aiohttp_client: Any, tmp_path: Path) -> None:
    store = SlowCompactedPuts(tmp_path / "s")
    client = await aiohttp_client(make_app(make_config(), store=store))
    for seq in range(2):
        await client.post("/v1/ingest", data=dumps(batch(seq=seq, eof=seq == 1, evs=events([seq]))),
                          headers=ingest_headers())
    await asyncio.wait_for(store.started.wait(), 5)
    await asyncio.wait_for(client.close(), 5)  # cleanup cancels the compaction instead of waiting 30 s
    assert len(await staged_names(store)) == 2


async def test_a_batch_resent_within_the_delay_is_a_duplicate(aiohttp_client: Any, tmp_path: Path) -> None:
    """A shipper whose answer was lost sends the batch again, to any replica: within the compaction
    delay it still finds the batch's object and is answered `duplicate`; after the delay the stream
    is compacted to one object and the re-sent batch is merged away again at finalize."""
    store = LocalStore(tmp_path / "s")
    app = make_app(make_config(compact_delay=1.0), store=store)
    client = await aiohttp_client(app)
    bodies = [dumps(batch(seq=seq, eof=seq == 1, exit_code=0 if seq else None, evs=events([seq])))
              for seq in range(2)]
    for body in bodies:
        r = await client.post("/v1/ingest", data=body, headers=ingest_headers())
        assert r.status == 200 and (await r.json())["duplicate"] is False
    await asyncio.sleep(0.3)  # an undelayed compaction of two one-line batches is long done by now
    assert len(await staged_names(store)) == 2
    for body in bodies:
        r = await client.post("/v1/ingest", data=body, headers=ingest_headers())
        assert r.status == 200 and (await r.json())["duplicate"] is True

    async def compacted() -> bool:
        names = await staged_names(store)
        return len(names) == 1 and names[0].startswith("c-") and names[0].endswith(".eof.json")

    await wait_for(compacted)
    r = await client.post("/v1/ingest", data=bodies[0], headers=ingest_headers())
    assert r.status == 200  # stored again: its events are in the compacted object too
    r = await client.post(f"/v1/jobs/{JOB}/finalize", headers=admin_headers(), json={"wait_seconds": 0})
    assert r.status == 200 and (await r.json())["complete"]
    chunks = await read_tree(store, logs_prefix(JOB))
    got = [e["line"] for doc in chunks.values() for e in orjson.loads(doc)["events"]]
    assert sorted(got) == ["line 0", "line 1"]
