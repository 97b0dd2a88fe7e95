"""After a successful finalize, staging that compacted objects cover is deleted (configurable), re-finalize
still gives the same bytes, and stray temp files of the local store go (issue 16)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from agg_helpers import JOB, POD, make_config, read_tree

from aggregator.config import AggregatorConfig
from aggregator.errors import ConfigError
from aggregator.finalize.job import finalize_job
from aggregator.model import StoredBatch
from aggregator.staging import encode_batch
from aggregator.storage import LocalStore
from aggregator.storage.layout import batch_key, logs_prefix, staging_prefix, summary_key


def batches(container: str, n: int, per: int = 5) -> list[StoredBatch]:
    return [StoredBatch(JOB, POD, container, "running", i, i == n - 1, 0 if i == n - 1 else None, None,
                        tuple((o, 1000.0 + o, f"{container} {o}") for o in range(i * per, (i + 1) * per)))
            for i in range(n)]


async def staged(store: LocalStore, bs: list[StoredBatch]) -> None:
    for b in bs:
        await store.put(batch_key(b), encode_batch(b), overwrite=False)


async def artifacts(store: LocalStore) -> dict[str, bytes]:
    tree = await read_tree(store, logs_prefix(JOB))
    tree[summary_key(JOB)] = await store.get(summary_key(JOB)) or b""
    return tree


async def test_compacted_retention_leaves_one_object_per_stream_and_the_same_bytes(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    await staged(store, batches("blast", 6) + batches("vmtouch", 1))
    cfg = make_config()
    await finalize_job(store, cfg, JOB, wait_seconds=0, existing_last_output={})
    first = await artifacts(store)
    names = [k.rsplit("/", 1)[1] for k in await store.list_keys(staging_prefix(JOB))]
    assert sum(n.startswith("c-") for n in names) == 1 and sum(n.startswith("b-") for n in names) == 1  # vmtouch's one
    assert any(n.endswith(".eof.json") and n.startswith("c-") for n in names)  # eof still seen from a listing
    await finalize_job(store, cfg, JOB, wait_seconds=0, existing_last_output={})
    assert await artifacts(store) == first


async def test_retention_all_keeps_every_batch(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    await staged(store, batches("blast", 4))
    await finalize_job(store, make_config(staging_retention="all"), JOB, wait_seconds=0, existing_last_output={})
    names = [k.rsplit("/", 1)[1] for k in await store.list_keys(staging_prefix(JOB))]
    assert sum(n.startswith("b-") for n in names) == 4 and sum(n.startswith("c-") for n in names) == 1


async def test_old_temp_files_are_swept_fresh_ones_kept(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    await staged(store, batches("blast", 2))
    folder = tmp_path.joinpath(*staging_prefix(JOB).split("/"), POD, "blast")
    old, fresh = folder / ".tmp-crashed.part", folder / ".tmp-writing.part"
    old.write_bytes(b"half")
    fresh.write_bytes(b"half")
    an_hour_ago = time.time() - 7200
    os.utime(old, (an_hour_ago, an_hour_ago))
    await finalize_job(store, make_config(), JOB, wait_seconds=0, existing_last_output={})
    assert not old.exists() and fresh.exists()


def test_unknown_retention_is_refused() -> None:
    with pytest.raises(ConfigError, match="STAGING_RETENTION"):
        AggregatorConfig.from_env({"BLAST_LOGS_SECRET": "s", "BLAST_LOGS_ADMIN_TOKEN": "a",
                                   "BLAST_LOGS_STAGING_RETENTION": "forever"})
