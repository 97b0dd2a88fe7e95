"""Pass one reads one-batch streams in groups (`SCAN_GROUP` at a time, one thread job each): a wide job
gives the bytes `build_artifacts` gives; an unreadable or foreign batch is skipped as one read alone
would be; a batch compacted away between the listing and the group's read is found again (issue 16)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from agg_helpers import JOB, make_config
from test_finalize_streaming import expected_tree, finalized_tree, stage

from aggregator.artifacts import state_of_batch
from aggregator.finalize import job as finalize_module
from aggregator.model import StoredBatch
from aggregator.staging import encode_batch, encode_compacted
from aggregator.storage import LocalStore
from aggregator.storage.layout import batch_key, compact_key


def one_batch_streams(n: int, job: str = JOB) -> list[StoredBatch]:
    return [StoredBatch(job, f"wide-{i}", "blast", "running", 0, i % 7 != 0, i % 3 if i % 5 == 0 else None, None,
                        tuple((off, 1000.0 + i + off / 10, f"stream {i} line {off}") for off in range(i % 4)))
            for i in range(n)]


async def test_a_wide_job_in_groups_gives_the_in_memory_bytes(tmp_path: Path) -> None:
    batches = one_batch_streams(3 * finalize_module.SCAN_GROUP + 5)
    store = LocalStore(tmp_path)
    await stage(store, batches)
    cfg = make_config()
    assert await finalized_tree(store, cfg) == expected_tree(batches, cfg)


async def test_unreadable_and_foreign_batches_are_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = one_batch_streams(20)
    store = LocalStore(tmp_path)
    await stage(store, good)
    broken = batch_key(StoredBatch(JOB, "broken", "blast", "running", 0, True, None, None, ((0, 1.0, "x"),)))
    await store.put(broken, b"{not json")
    foreign = StoredBatch("another-job", "alien", "blast", "running", 0, True, None, None, ((0, 1.0, "x"),))
    alien_key = batch_key(StoredBatch(JOB, "alien", "blast", "running", 0, True, None, None, ((0, 1.0, "y"),)))
    await store.put(alien_key, encode_batch(foreign))
    cfg = make_config()
    with caplog.at_level(logging.ERROR, logger="aggregator.finalize"):
        tree = await finalized_tree(store, cfg)
    assert tree == expected_tree(good, cfg)
    assert [r.fields["key"] for r in caplog.records if r.getMessage() == "unreadable staged batch skipped"] == [broken]


class CompactsBeforeTheGroupRead(LocalStore):
    """A LocalStore on which an ingest-side compaction of `stream`'s batch lands just before a group read."""

    def __init__(self, root: Path, batch: StoredBatch) -> None:
        super().__init__(root)
        self.batch = batch
        self.done = False

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        key = batch_key(self.batch)
        if not self.done and key in keys:
            self.done = True
            name = key.rsplit("/", 1)[1]
            state = state_of_batch(self.batch)
            await self.put(compact_key(JOB, self.batch.pod, self.batch.container, [name], state.eof),
                           encode_compacted(JOB, state, [name]), overwrite=False)
            await self.delete(key)
        return await super().get_many(keys)


async def test_a_batch_compacted_away_before_the_group_read_is_found_again(tmp_path: Path) -> None:
    batches = one_batch_streams(30)
    store = CompactsBeforeTheGroupRead(tmp_path, batches[9])
    await stage(store, batches)
    cfg = make_config()
    assert await finalized_tree(store, cfg) == expected_tree(batches, cfg)
    assert store.done
