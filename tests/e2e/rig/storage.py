"""Reading what the aggregators stored, straight from Azurite with the Azure SDK (not our store code)."""

from __future__ import annotations

import concurrent.futures
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import orjson
from azure.storage.blob import BlobServiceClient, ContainerClient

#: Parallel blob reads (Azurite answers each in a few milliseconds; a full run has thousands).
READ_THREADS = 8


def container_client(connection_string: str, container: str) -> ContainerClient:
    return BlobServiceClient.from_connection_string(connection_string).get_container_client(container)


def ensure_container(connection_string: str, container: str) -> None:
    client = container_client(connection_string, container)
    if not client.exists():
        client.create_container()


def read_blobs(client: ContainerClient, prefix: str) -> dict[str, bytes]:
    """Every blob under `prefix`, by name."""
    names = [b.name for b in client.list_blobs(name_starts_with=prefix)]

    def get(name: str) -> bytes:
        return client.download_blob(name).readall()

    with concurrent.futures.ThreadPoolExecutor(READ_THREADS) as pool:
        return dict(zip(names, pool.map(get, names), strict=True))


@dataclass(frozen=True)
class Artifacts:
    """A job's chunk artifacts and summary as stored, raw and parsed."""

    raw: dict[str, bytes]
    #: phase -> its events in chunk order
    events: dict[str, list[dict[str, Any]]]
    summary: dict[str, Any] | None
    problems: list[str]

    def stream_lines(self, phase: str, pod: str, container: str) -> list[str]:
        return [e["line"] for e in self.events.get(phase, []) if e["pod"] == pod and e["container"] == container]


def read_artifacts(client: ContainerClient, job_id: str) -> Artifacts:
    """`{job}/execution-steps/logs/{phase}/{seq}.json` in seq order, and `summary.json`; shape problems listed."""
    steps = f"{job_id}/execution-steps/"
    raw = {k: v for k, v in read_blobs(client, steps + "logs/").items()}
    summary_raw = read_blobs(client, steps + "summary.json").get(steps + "summary.json")
    if summary_raw is not None:
        raw[steps + "summary.json"] = summary_raw
    problems: list[str] = []
    chunks: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    for name, data in raw.items():
        rest = name[len(steps + "logs/"):]
        if not name.startswith(steps + "logs/"):
            continue
        phase, _, file = rest.partition("/")
        try:
            seq = int(file.removesuffix(".json"))
            body = orjson.loads(data)
        except (ValueError, orjson.JSONDecodeError) as e:
            problems.append(f"{name}: not a chunk ({e})")
            continue
        if body.get("seq") != seq or body.get("phase") != phase or body.get("job_id") != job_id:
            problems.append(f"{name}: header does not match its name")
        if len(body.get("events", [])) > 100:
            problems.append(f"{name}: more than 100 events")
        chunks[phase][seq] = body
    events: dict[str, list[dict[str, Any]]] = {}
    for phase, by_seq in chunks.items():
        if sorted(by_seq) != list(range(len(by_seq))):
            problems.append(f"{phase}: chunk numbers have gaps: {sorted(by_seq)[:10]}...")
        events[phase] = [e for seq in sorted(by_seq) for e in by_seq[seq]["events"]]
    summary = orjson.loads(summary_raw) if summary_raw is not None else None
    return Artifacts(raw=raw, events=events, summary=summary, problems=problems)


def copy_staging(src: ContainerClient, dst: ContainerClient, job_id: str) -> int:
    """Copy the job's staged batches (not the finalize lock or manifest) into another container."""
    staging = f"{job_id}/execution-steps/_staging/"
    blobs = {k: v for k, v in read_blobs(src, staging).items()
             if not k.endswith(("/_finalize.lock", "/_manifest.json"))}

    def put(item: tuple[str, bytes]) -> None:
        dst.upload_blob(item[0], item[1], overwrite=True)

    with concurrent.futures.ThreadPoolExecutor(READ_THREADS) as pool:
        list(pool.map(put, blobs.items()))
    return len(blobs)
