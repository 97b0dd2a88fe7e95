"""Where every object of a job lives in storage (docs/design.md, "Staging layout").

    {job_id}/execution-steps/summary.json
    {job_id}/execution-steps/logs/{phase}/{seq}.json             chunk artifacts
    {job_id}/execution-steps/_staging/{pod}/{container}/b-{digest}[.eof].json   staged batches
    {job_id}/execution-steps/_staging/{pod}/{container}/c-{count}-{digest}[.eof].json   a compacted stream
    {job_id}/execution-steps/_staging/_finalize.lock
    {job_id}/execution-steps/_staging/_manifest.json           the chunks the last finalize wrote

Every accepted batch is one object named by a digest of its identity, so a re-sent batch finds its own
object (put-if-absent) and a stream's eof is visible from a listing alone.
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Iterable
from dataclasses import dataclass

import orjson

from aggregator.model import StoredBatch
from blastlogs.protocol import valid_k8s_name

#: The folder of a job's artifacts, under its job id.
STEPS_DIR = "execution-steps"
STAGING_DIR = "_staging"
LOGS_DIR = "logs"
DIGEST_HEX = 32


def steps_prefix(job_id: str) -> str:
    return f"{job_id}/{STEPS_DIR}/"


def staging_prefix(job_id: str) -> str:
    return f"{steps_prefix(job_id)}{STAGING_DIR}/"


def logs_prefix(job_id: str) -> str:
    return f"{steps_prefix(job_id)}{LOGS_DIR}/"


def chunk_key(job_id: str, phase: str, seq: int) -> str:
    return f"{logs_prefix(job_id)}{phase}/{seq}.json"


def summary_key(job_id: str) -> str:
    return f"{steps_prefix(job_id)}summary.json"


def lock_key(job_id: str) -> str:
    return f"{staging_prefix(job_id)}_finalize.lock"


def manifest_key(job_id: str) -> str:
    return f"{staging_prefix(job_id)}_manifest.json"


_OFF_LINE = operator.itemgetter(0, 2)


def batch_digest(batch: StoredBatch) -> str:
    """SHA-256 over what identifies a batch's content; not `ts` or `seq`, which a re-send may change."""
    identity = [
        list(map(_OFF_LINE, batch.events)),  # (off, line) pairs: orjson writes a tuple as an array
        None if batch.dropped is None else [batch.dropped.off, batch.dropped.lines, batch.dropped.bytes,
                                            *(() if batch.dropped.exact else (False,))],
        batch.eof,
        batch.exit_code,
    ]
    return hashlib.sha256(orjson.dumps(identity)).hexdigest()[:DIGEST_HEX]


def batch_key(batch: StoredBatch) -> str:
    suffix = ".eof.json" if batch.eof else ".json"
    return f"{stream_prefix(batch.job_id, batch.pod, batch.container)}b-{batch_digest(batch)}{suffix}"


def stream_prefix(job_id: str, pod: str, container: str) -> str:
    """Where one stream's batches and compacted objects are staged."""
    return f"{staging_prefix(job_id)}{pod}/{container}/"


def compact_key(job_id: str, pod: str, container: str, covers: Iterable[str], eof: bool) -> str:
    """The compacted object of a stream's batches `covers` (their names, `b-...json`): the name says how
    many it covers and a digest of which, so the same set always gets the same key (put-if-absent)."""
    names = sorted(set(covers))
    digest = hashlib.sha256("\n".join(names).encode()).hexdigest()[:DIGEST_HEX]
    suffix = ".eof.json" if eof else ".json"
    return f"{stream_prefix(job_id, pod, container)}c-{len(names):08d}-{digest}{suffix}"


@dataclass(frozen=True, slots=True)
class StagedKey:
    """What a staging key tells without reading it: a batch, or (`compacted`) a compacted stream."""

    pod: str
    container: str
    eof: bool
    name: str
    compacted: bool = False

    @property
    def stream(self) -> tuple[str, str]:
        return (self.pod, self.container)

    @property
    def covers(self) -> int:
        """How many batches a compacted object covers (1 for a batch)."""
        return int(self.name[2:10]) if self.compacted else 1


def parse_staged_key(job_id: str, key: str) -> StagedKey | None:
    """The stream, kind and eof flag of a staged batch or compacted key; None for anything else."""
    prefix = staging_prefix(job_id)
    if not key.startswith(prefix):
        return None
    parts = key[len(prefix):].split("/")
    if len(parts) != 3 or not parts[2].endswith(".json"):
        return None
    pod, container, name = parts
    compacted = name.startswith("c-") and len(name) > 11 and name[2:10].isdigit() and name[10] == "-"
    if not (compacted or name.startswith("b-")):
        return None
    if not valid_k8s_name(pod) or not valid_k8s_name(container):
        return None
    return StagedKey(pod, container, name.endswith(".eof.json"), name, compacted)


def parse_batch_key(job_id: str, key: str) -> StagedKey | None:
    """The stream and eof flag of a staged batch key; None for anything else (lock, manifest, compacted)."""
    staged = parse_staged_key(job_id, key)
    return staged if staged is not None and not staged.compacted else None


def stream_states(job_id: str, keys: list[str]) -> dict[tuple[str, str], bool]:
    """Every staged stream `(pod, container)` and whether it has reached eof (batches or compacted)."""
    states: dict[tuple[str, str], bool] = {}
    for key in keys:
        staged = parse_staged_key(job_id, key)
        if staged is not None:
            stream = (staged.pod, staged.container)
            states[stream] = states.get(stream, False) or staged.eof
    return states
