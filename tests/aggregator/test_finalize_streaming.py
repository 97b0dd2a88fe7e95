"""Finalize's stream-by-stream path (compaction, two passes, bounded cache) gives the bytes the
in-memory `build_artifacts` gives for the same batches, on randomized jobs (issue 16)."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest
from agg_helpers import JOB, make_config, read_tree

from aggregator import fanout, staging
from aggregator.artifacts import build_artifacts, chunk_body, summary_body
from aggregator.config import AggregatorConfig
from aggregator.finalize import job as finalize_module
from aggregator.finalize import streams as streams_module
from aggregator.finalize.job import finalize_job
from aggregator.model import Dropped, StoredBatch
from aggregator.staging import encode_batch
from aggregator.storage import LocalStore
from aggregator.storage.layout import batch_key, chunk_key, logs_prefix, staging_prefix, summary_key

CONTAINERS = ["blast", "results-export", "vmtouch", "sidecar-x"]


def random_job(rng: random.Random, streams: int) -> list[StoredBatch]:
    """Streams of re-formed, overlapping and repeated batches, with drops, exit codes and phases."""
    out: list[StoredBatch] = []
    for n in range(streams):
        pod, container = f"pod-{n % 5}", rng.choice(CONTAINERS) + f"-{n}" if n % 3 == 0 else rng.choice(CONTAINERS)
        lines = rng.randint(0, 60)
        base = rng.uniform(1000, 1100)
        off, seq = 0, 0
        while off < lines or seq == 0:
            size = rng.randint(1, 9)
            start = max(0, off - rng.randint(0, 3))  # some overlap: re-formed batches
            end = min(lines, off + size)
            evs = tuple((o, base + o / 7 + rng.choice([0.0, 0.0, 0.5]), f"{container} line {o} é" * rng.choice([1, 1, 1, 90]))
                        for o in range(start, end))
            last = end >= lines
            dropped = Dropped(off, rng.randint(1, 4), rng.randint(10, 99)) if rng.random() < 0.15 else None
            out.append(StoredBatch(JOB, pod, container, rng.choice(["running", "setup"]), seq, last and
                                   rng.random() < 0.8, rng.choice([None, 0, 1]) if last else None, dropped, evs))
            if rng.random() < 0.2:  # a re-send with a later seq
                out.append(dataclasses.replace(out[-1], seq=seq + 1))
            off, seq = end, seq + 1
            if last:
                break
    return out


def expected_tree(batches: list[StoredBatch], cfg: AggregatorConfig) -> dict[str, bytes]:
    art = build_artifacts(batches, phase_table=cfg.phase_table, head_lines=cfg.head_lines,
                          tail_lines=cfg.tail_lines, chunk_events=cfg.chunk_events)
    tree = {chunk_key(JOB, phase, i): chunk_body(JOB, phase, i, events)
            for phase, chunks in art.phases.items() for i, events in enumerate(chunks)}
    tree[summary_key(JOB)] = summary_body({"job_id": JOB, "complete": art.complete,
                                           "incomplete_streams": art.incomplete_streams, "steps": art.steps})
    return tree


async def finalized_tree(store: LocalStore, cfg: AggregatorConfig) -> dict[str, bytes]:
    await finalize_job(store, cfg, JOB, wait_seconds=0, existing_last_output={})
    tree = await read_tree(store, logs_prefix(JOB))
    tree[summary_key(JOB)] = await store.get(summary_key(JOB)) or b""
    return tree


async def stage(store: LocalStore, batches: list[StoredBatch]) -> None:
    for b in batches:
        await store.put(batch_key(b), encode_batch(b), overwrite=False)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("cache", [0, 10**6])
@pytest.mark.parametrize("split", ["no", "yes", "sliced"])
async def test_streaming_finalize_matches_build_artifacts(tmp_path: Path, seed: int, cache: int, split: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(finalize_module, "FINALIZE_CACHE_ENTRIES", cache)
    if split != "no":  # compacted objects one event per line: finalize reads big streams' ends alone
        monkeypatch.setattr(staging, "SPLIT_EVENTS", 2)
    if split == "sliced":  # ... in ranged reads of a few bytes: the head, then the last lines (`EndsScan`)
        monkeypatch.setattr(streams_module, "SCAN_SLICE", 64 + seed * 100)
    if not cache:
        monkeypatch.setattr(fanout, "OFF_LOOP_BYTES", 0)  # every decode, merge and encode in a thread
    rng = random.Random(seed)
    cfg = make_config(head_lines=rng.randint(0, 12), tail_lines=rng.randint(0, 12), chunk_events=rng.randint(1, 7),
                      read_concurrency=rng.randint(1, 4))
    batches = random_job(rng, rng.randint(1, 12))
    early, late = batches[: len(batches) // 2], batches[len(batches) // 2:]
    store = LocalStore(tmp_path)
    await stage(store, early)
    assert await finalized_tree(store, cfg) == expected_tree(early, cfg)
    compacted = [k for k in await store.list_keys(staging_prefix(JOB)) if "/c-" in k]
    # Late batches on top of compacted streams; then re-finalize: still the all-batches bytes.
    await stage(store, late)
    assert await finalized_tree(store, cfg) == expected_tree(batches, cfg)
    assert await finalized_tree(store, cfg) == expected_tree(batches, cfg)
    assert compacted or len(early) <= len({(b.pod, b.container) for b in early})  # compaction happened
