"""The staged batch's encoding: a `StoredBatch` as the bytes of its staging object, and back.

Where the object lives is `aggregator.storage.layout`'s business (`batch_key`).
"""

from __future__ import annotations

from typing import Any

import orjson

from aggregator.checks import events_of_columns, is_int, is_nonneg_int, valid_columns
from aggregator.model import Dropped, StoredBatch
from blastlogs.protocol import valid_job_id, valid_k8s_name, valid_phase

STAGING_VERSION = 1


def encode_batch(batch: StoredBatch) -> bytes:
    d = batch.dropped
    return orjson.dumps({
        "v": STAGING_VERSION,
        "job_id": batch.job_id,
        "pod": batch.pod,
        "container": batch.container,
        "phase": batch.phase,
        "seq": batch.seq,
        "eof": batch.eof,
        "exit_code": batch.exit_code,
        # an inexact report (issue 18) adds `false`; exact ones stay as version 1 always wrote them
        "dropped": None if d is None else [d.off, d.lines, d.bytes, *(() if d.exact else (False,))],
        "events": batch.events,  # (off, ts, line) tuples, written as arrays
    })


def decode_batch(data: bytes) -> StoredBatch:
    """The batch a staging object holds; ValueError when it is not one (never trust storage blindly)."""
    try:
        obj: Any = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise ValueError(f"not JSON: {e}") from None
    if not isinstance(obj, dict) or obj.get("v") != STAGING_VERSION:
        raise ValueError("not a staged batch of a known version")
    try:
        job_id, pod, container, phase = obj["job_id"], obj["pod"], obj["container"], obj["phase"]
        seq, eof, exit_code, dropped, events = (
            obj["seq"], obj["eof"], obj["exit_code"], obj["dropped"], obj["events"])
    except KeyError as e:
        raise ValueError(f"missing field {e}") from None
    if not (valid_job_id(job_id) and valid_k8s_name(pod) and valid_k8s_name(container) and valid_phase(phase)):
        raise ValueError("bad ids")
    if not is_nonneg_int(seq) or not isinstance(eof, bool):
        raise ValueError("bad seq or eof")
    if exit_code is not None and not is_int(exit_code):
        raise ValueError("bad exit_code")
    drop: Dropped | None = None
    if dropped is not None:
        if not (isinstance(dropped, list) and len(dropped) in (3, 4) and all(is_nonneg_int(x) for x in dropped[:3])
                and dropped[3:] in ([], [False])):
            raise ValueError("bad dropped")
        drop = Dropped(dropped[0], dropped[1], dropped[2], exact=len(dropped) == 3)
    if not isinstance(events, list):
        raise ValueError("bad events")
    return StoredBatch(job_id, pod, container, phase, seq, eof, exit_code, drop, _decode_events(events))


def _decode_events(events: list[Any]) -> tuple[tuple[int, float, str], ...]:
    """(off, ts, line) tuples from `[[off, ts, line], ...]`, checked column by column (orjson gives
    plain list, int, float and str, never subclasses); ValueError for any bad event."""
    if not events:
        return ()
    if not (set(map(type, events)) <= {list} and set(map(len, events)) == {3}):
        raise ValueError("bad event")
    offs, tss, lines = zip(*events, strict=True)
    if not valid_columns(offs, tss, lines):
        raise ValueError("bad event")
    return events_of_columns(offs, tss, lines)
