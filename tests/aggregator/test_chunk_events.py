"""A finalize's chunk events straight from a compacted object's bytes (`aggregator/_chunks.c` through
`staging.encoded_entries`) are the bytes decoding gives: the same events, the same `last_output` block,
and a finalize with the compiled module writes what one without it writes (issue 16). Anything the C
code does not accept exactly is declined, and decoding judges it."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import orjson
import pytest
from agg_helpers import JOB, make_config, read_tree
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator import staging
from aggregator.artifacts import StreamState, TextSpan, block_of, chunk_body, retained_entries
from aggregator.finalize.job import finalize_job
from aggregator.model import StoredBatch
from aggregator.staging import decode_compacted, encode_batch, encode_compacted, encoded_entries
from aggregator.storage import LocalStore, Store
from aggregator.storage.layout import batch_key, steps_prefix

chunks = pytest.importorskip("aggregator._chunks")

HEAD, TAIL = 6, 9


def test_built_wherever_a_c_compiler_is() -> None:
    """Optional like the shipper's hot path: where a compiler is at hand, it must have been built."""
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler here")
    assert staging._chunks is not None


def state_of(texts: list[str], tss: list[float], exit_code: int | None) -> StreamState:
    events = [(2 * i + 1, tss[i % len(tss)], i % 4, t) for i, t in enumerate(texts)]
    return StreamState("pod-7", "results-export", events, [], True,
                       None if exit_code is None else (9, exit_code), (9, "running"))


def decoded_way(data: bytes) -> tuple[list[bytes], TextSpan]:
    """What finalize gets by decoding: each chunk event as orjson writes it, and the stream's block."""
    state = decode_compacted(data).state
    entries, _ = retained_entries(state, HEAD, TAIL)
    events = [orjson.dumps({"ts": ts, "pod": state.pod, "container": state.container, "line": t})
              for ts, t, _ in entries]
    return events, block_of(state.pod, state.container, entries, None if state.exit is None else state.exit[1])


texts = st.text(st.characters(exclude_categories=("Cs",)), max_size=30) | st.sampled_from(
    ['q"\\', "a],[b", "],\n[", "\u2028\u2029", "\x00\x1f\x7f", "😀é", "\\u0041", "/"])


@settings(max_examples=150, deadline=None)
@given(lines=st.lists(texts, min_size=1, max_size=HEAD + TAIL),
       tss=st.lists(st.floats(allow_nan=False, allow_infinity=False, width=64), min_size=1, max_size=5),
       exit_code=st.none() | st.integers(-300, 300), wide=st.booleans())
def test_same_events_and_block_as_decoding(lines: list[str], tss: list[float], exit_code: int | None,
                                           wide: bool) -> None:
    if wide:  # a block past `last_output`'s ends: read at its ends alone
        lines = [t * 700 for t in lines]
    old = staging.SPLIT_EVENTS
    staging.SPLIT_EVENTS = 0
    try:
        data = encode_compacted(JOB, state_of(lines, tss, exit_code), ["b-1.json"])
    finally:
        staging.SPLIT_EVENTS = old
    got = encoded_entries(data, JOB, HEAD, TAIL)
    assert got is not None
    events, block = decoded_way(data)
    assert got.events == events
    assert got.block == block


def split_object(n: int, seed: int = 5) -> bytes:
    rng = random.Random(seed)
    old = staging.SPLIT_EVENTS
    staging.SPLIT_EVENTS = 0
    try:
        return encode_compacted(JOB, state_of([f"line {i} {'é' * rng.randint(0, 3)}" for i in range(n)],
                                              [1700000000.25 + rng.random()], 0), ["b-1.json"])
    finally:
        staging.SPLIT_EVENTS = old


@pytest.mark.parametrize("bad", [
    (b'"line 3 ', b'"line 3 \xc3\x28'),           # invalid UTF-8
    (b'"line 3 ', b'"line 3 \\ud800'),            # a lone surrogate escape
    (b'"line 3 ', b'"line 3 \\x41'),              # not a JSON escape
    (b'"line 3 ', b'"line 3 \x01'),               # a raw control character
    (b'"line 3 ', b'"line 3 \xed\xa0\x80'),       # a surrogate encoded as UTF-8
    (b'[1,', b'[1,+'),                            # a number JSON does not allow
    (b'[1,', b'[1,0'),                            # nor a leading zero
    (b'[1,', b'[-1,'),                            # an offset that is not a natural number
    (b'"],\n', b'"] ,\n'),                        # anything after an event
])
def test_what_the_c_code_does_not_accept_is_declined(bad: tuple[bytes, bytes]) -> None:
    data = split_object(12)
    assert encoded_entries(data, JOB, HEAD, TAIL) is not None
    broken = data.replace(bad[0], bad[1], 1)
    assert broken != data
    assert encoded_entries(broken, JOB, HEAD, TAIL) is None


def test_declines_what_it_cannot_keep_whole() -> None:
    data = split_object(HEAD + TAIL + 1)
    assert encoded_entries(data, JOB, HEAD, TAIL) is None  # retention cuts it: decode its ends
    assert encoded_entries(split_object(5), "other-job", HEAD, TAIL) is None
    assert encoded_entries(encode_compacted(JOB, state_of(["x"], [1.0], None), ["b-1.json"]), JOB, HEAD, TAIL) is None
    reported = state_of(["a", "b"], [1.0], None)
    reported.drops = [(2, 1, 3, 30, True)]
    old = staging.SPLIT_EVENTS
    staging.SPLIT_EVENTS = 0
    try:
        assert encoded_entries(encode_compacted(JOB, reported, ["b-1.json"]), JOB, HEAD, TAIL) is None
    finally:
        staging.SPLIT_EVENTS = old


def batches(pods: int, lines: int) -> list[StoredBatch]:
    out = []
    for p in range(pods):
        for container in ("blast", "results-export"):
            for seq in range(3):
                evs = tuple((off, 1000.0 + p + off / 100, f"{container} {p} {off} ü \"{'x' * (off % 50)}\"")
                            for off in range(seq * lines, (seq + 1) * lines))
                out.append(StoredBatch(JOB, f"pod-{p}", container, "running", seq, seq == 2, 3 if seq == 2 else None,
                                       None, evs))
    return out


async def finalized(root: Path | Store, monkeypatch: pytest.MonkeyPatch, compiled: bool) -> dict[str, bytes]:
    monkeypatch.setattr(staging, "SPLIT_EVENTS", 30)
    monkeypatch.setattr(staging, "_chunks", chunks if compiled else None)
    store = LocalStore(root) if isinstance(root, Path) else root
    for b in batches(4, 40):
        assert await store.put(batch_key(b), encode_batch(b), overwrite=False)
    cfg = make_config(head_lines=100, tail_lines=200)
    summary = await finalize_job(store, cfg, JOB, wait_seconds=0, existing_last_output={})
    tree = await read_tree(store, steps_prefix(JOB))
    return {k: v for k, v in tree.items() if "/logs/" in k or k.endswith("summary.json")} | {"answer": summary}


async def test_finalize_writes_the_same_bytes_with_and_without_the_module(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with_c = await finalized(tmp_path / "c", monkeypatch, True)
    without = await finalized(tmp_path / "py", monkeypatch, False)
    assert with_c == without
    assert sum(1 for k in with_c if "/logs/running/" in k) == -(-4 * 2 * 120 // 100)
    assert len(with_c) > 10


def test_chunk_body_of_bytes_is_orjson_of_the_events() -> None:
    events = [{"ts": 1.5, "pod": "p", "container": "c", "line": 'a"b'}, {"ts": 2.0, "pod": "p", "container": "c",
                                                                          "line": "é"}]
    mixed = [orjson.dumps(events[0]), events[1]]
    assert chunk_body(JOB, "running", 3, mixed) == chunk_body(JOB, "running", 3, events) == orjson.dumps(
        {"job_id": JOB, "phase": "running", "seq": 3, "events": events})


async def test_finalize_on_either_store_writes_what_decoding_writes(
        store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On Azurite too (no `put_many` there): the module's chunks are the local store's without it."""
    assert await finalized(store, monkeypatch, True) == await finalized(tmp_path / "py", monkeypatch, False)
