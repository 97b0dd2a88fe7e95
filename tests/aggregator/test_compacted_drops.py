"""An inexact dropped report (`exact: false`) keeps its meaning through a compacted stream object."""

from __future__ import annotations

import orjson

from aggregator.artifacts import merge_states, retained_entries, state_of_batch
from aggregator.model import StoredBatch
from aggregator.staging import decode_compacted, encode_compacted
from blastlogs.protocol import Dropped


def _batch(seq: int, dropped: Dropped | None, events: tuple[tuple[int, float, str], ...]) -> StoredBatch:
    return StoredBatch(job_id="elb-1", pod="p-1", container="blast", phase="running", seq=seq, eof=False,
                       exit_code=None, dropped=dropped, events=events)


def test_inexact_and_exact_reports_survive_compaction() -> None:
    state = merge_states([
        state_of_batch(_batch(0, Dropped(0, 2, 20, exact=True), ((20, 1.0, "a"),))),
        state_of_batch(_batch(1, Dropped(22, 1, 0, exact=False), ((40, 2.0, "b"),))),
    ])
    body = encode_compacted("elb-1", state, ["k0", "k1"])
    # An exact report keeps the four numbers it always had; an inexact one says so after them.
    assert orjson.loads(body)["drops"] == [[0, 0, 2, 20], [22, 1, 1, 0, False]]
    again = decode_compacted(body).state
    assert again.drops == state.drops
    texts = [text for _, text, _ in retained_entries(again, 1000, 10000)[0]]
    assert "[... 2 lines (20 bytes) dropped by the shipper ...]" in texts
    assert "[... at least 1 lines (0 bytes) dropped by the shipper ...]" in texts
