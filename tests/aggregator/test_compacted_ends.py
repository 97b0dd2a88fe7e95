"""A big compacted object is one event per line (`SPLIT_EVENTS`), still one JSON document: decoded whole
it is the same state, and its ends alone (`decode_compacted_ends`) give the same retained entries as
every event, whatever the lines hold and wherever the dropped reports fall (issue 16)."""

from __future__ import annotations

import random
from itertools import pairwise

import pytest

from aggregator import staging
from aggregator.artifacts import StreamState, merge_states, retained_entries
from aggregator.staging import (
    CompactedEnds,
    EndsScan,
    decode_compacted,
    decode_compacted_ends,
    encode_compacted,
    join_pieces,
    piece_of_compacted,
    piece_of_state,
)

TEXTS = ["x", "a],[b", "],\n[", 'q"\\', "é", "", "line\n", "\u2028"]


def random_state(rng: random.Random) -> StreamState:
    offs = sorted(rng.sample(range(0, 400, 2), rng.randint(0, 40)))
    events = [(o, 1000.0 + o / 7, rng.randint(0, 5), rng.choice(TEXTS) * rng.randint(1, 3)) for o in offs]
    drops = sorted({o: (o, rng.randint(0, 3), rng.randint(1, 5), rng.randint(1, 50), rng.random() < 0.8)
                    for o in rng.sample(range(1, 401, 2), rng.randint(0, 6))}.values())
    return StreamState("pod-1", "blast", events, drops, rng.random() < 0.5,
                       None if rng.random() < 0.5 else (3, 1), (2, "running"))


def test_ends_give_the_entries_every_event_gives(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(staging, "SPLIT_EVENTS", 5)
    rng = random.Random(16)
    used = 0
    for _ in range(2000):
        state = random_state(rng)
        data = encode_compacted("elb-1", state, ["b-2.json", "b-1.json"])
        assert decode_compacted(data).state == state
        head, tail = rng.randint(0, 8), rng.randint(0, 8)
        ends = decode_compacted_ends(data, head, tail)
        if ends is None:
            assert len(state.events) <= max(5, head + tail)
            continue
        used += 1
        assert ends.covers == {"b-1.json", "b-2.json"} and ends.state.drops == state.drops
        assert len(ends.state.events) == head + tail
        assert retained_entries(ends.state, head, tail, ends.gap) == retained_entries(state, head, tail)
    assert used > 500


def test_small_objects_keep_their_one_line_layout() -> None:
    state = StreamState("pod-1", "blast", [(0, 1.0, 0, "a"), (2, 2.0, 0, "b")], [], True, None, (0, "running"))
    data = encode_compacted("elb-1", state, ["b-1.json"])
    assert b"\n" not in data and decode_compacted_ends(data, 0, 0) is None


@pytest.mark.parametrize("split", [5, 10_000])
def test_joined_pieces_are_the_bytes_of_the_merged_state(monkeypatch: pytest.MonkeyPatch, split: int) -> None:
    """Batches with ordered, disjoint events (and an earlier compacted object of them) joined without
    decoding give the object `encode_compacted` writes for their merged state; overlapping ones do not join."""
    monkeypatch.setattr(staging, "SPLIT_EVENTS", split)
    rng = random.Random(split)
    for _ in range(300):
        cuts = sorted(rng.sample(range(1, 60), rng.randint(1, 6)))
        states = []
        for lo, hi in pairwise([0, *cuts, 60]):
            part = random_state(rng)
            part.events = [(o, 1000.0 + o, lo, rng.choice(TEXTS)) for o in range(lo * 4, hi * 4, rng.randint(1, 3))]
            states.append(part)
        rng.shuffle(states)
        merged = merge_states(states)
        want = encode_compacted("elb-1", merged, ["b-1.json", "b-2.json"])
        pieces = [piece_of_state(s) for s in states[1:]]
        first = encode_compacted("elb-1", merge_states(states[:1]), ["b-0.json"])
        old = piece_of_compacted(first)
        pieces.append(old[2] if old is not None else piece_of_state(states[0]))
        meta = merge_states([p.meta for p in pieces])
        assert join_pieces("elb-1", meta, ["b-2.json", "b-1.json"], pieces) == want
    overlapping = [piece_of_state(StreamState("p", "c", [(o, 1.0, 0, "x") for o in offs], [], False, None, (0, "running")))
                   for offs in ([0, 4, 8], [8, 12])]
    assert join_pieces("elb-1", merge_states([p.meta for p in overlapping]), [], overlapping) is None


def scanned(data: bytes, head: int, tail: int, rng: random.Random) -> CompactedEnds | bytes | None:
    scan = EndsScan(head, tail)
    pos = 0
    while pos < len(data):
        step = rng.choice([1, 2, 7, 64, len(data)])
        scan.feed(data[pos:pos + step])
        pos += step
    return scan.result()


def test_ends_read_a_slice_at_a_time_are_the_ends_of_the_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """`EndsScan` fed the object in slices of any size gives what `decode_compacted_ends` gives for all of
    it, or (small and one-line objects) the object's bytes, or None only where the whole is needed."""
    monkeypatch.setattr(staging, "SPLIT_EVENTS", 5)
    rng = random.Random(1616)
    kinds = {"ends": 0, "bytes": 0, "none": 0}
    for _ in range(1500):
        state = random_state(rng)
        data = encode_compacted("elb-1", state, [f"b-{i}.json" for i in range(rng.randint(1, 30))])
        head, tail = rng.randint(0, 8), rng.randint(0, 8)
        want = decode_compacted_ends(data, head, tail)
        got = scanned(data, head, tail, rng)
        if isinstance(got, CompactedEnds):
            kinds["ends"] += 1
            assert got == want
        elif isinstance(got, bytes):
            kinds["bytes"] += 1
            assert got == data
        else:
            kinds["none"] += 1
            assert want is None
    assert min(kinds["ends"], kinds["bytes"]) > 200, kinds


def test_a_scan_holds_the_ends_not_the_object(monkeypatch: pytest.MonkeyPatch) -> None:
    """20,000 events fed 4 KB at a time: what the scan keeps is its front and about its last lines."""
    state = StreamState("pod-1", "blast", [(i * 10, 1000.0 + i, 0, f"line {i} " + "x" * 90) for i in range(20_000)],
                        [], True, (0, 0), (0, "running"))
    data = encode_compacted("elb-1", state, ["b-1.json"])
    scan = EndsScan(10, 20)
    for pos in range(0, len(data), 4096):
        scan.feed(data[pos:pos + 4096])
        assert len(scan.front) + sum(len(d) for d, _ in scan.back) < 4 * 4096 + 30 * 150
    got = scan.result()
    assert isinstance(got, CompactedEnds) and got == decode_compacted_ends(data, 10, 20)
    assert got.gap.count == 20_000 - 30
