"""Which chunks a finalize wrote (the manifest's bytes), and the numbers new chunks get.

The manifest lets a re-run tell its own earlier chunks (rewritten or deleted) from foreign ones under
`logs/` (never touched; new chunks are numbered after them).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

import orjson

from aggregator.storage.layout import logs_prefix

log = logging.getLogger("aggregator.finalize")

MANIFEST_VERSION = 1
_CHUNK_NAME = re.compile(r"([0-9]+)\.json")


def decode_manifest(data: bytes | None) -> set[str]:
    if data is None:
        return set()
    obj = _safe_loads(data)
    chunks = obj.get("chunks") if isinstance(obj, dict) else None
    if not isinstance(chunks, list):
        log.error("unreadable finalize manifest; treating every chunk as foreign")
        return set()
    return {c for c in chunks if isinstance(c, str)}


def _safe_loads(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


def encode_manifest(keys: Iterable[str]) -> bytes:
    return orjson.dumps({"v": MANIFEST_VERSION, "chunks": sorted(keys)})


def first_free_seqs(job_id: str, listed: Iterable[str], ours: set[str]) -> dict[str, int]:
    """Per phase, the first chunk number after every foreign (not ours) `logs/{phase}/{n}.json`."""
    prefix = logs_prefix(job_id)
    first: dict[str, int] = {}
    for key in listed:
        if key in ours or not key.startswith(prefix):
            continue
        parts = key[len(prefix):].split("/")
        if len(parts) != 2:
            continue
        m = _CHUNK_NAME.fullmatch(parts[1])
        if m:
            first[parts[0]] = max(first.get(parts[0], 0), int(m.group(1)) + 1)
    return first
