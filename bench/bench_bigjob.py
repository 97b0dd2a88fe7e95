"""Big jobs (issue 16): job shapes over HTTP against two aggregator replicas, then finalize and cleanup.

    .venv/bin/python bench/bench_bigjob.py [--typical-pods 1000] [--chatty-pods 1000] [--chatty-lines 3600]
        [--flood-pods 100] [--flood-lines 1000000] [--wide-streams 20000] [--shapes typical,chatty,flood,wide]
        [--azurite-typical-pods 0] [--senders 16]

The defaults are the issue's full shapes; on a shared 2-core machine run them scaled down (the
command used is in docs/benchmarks.md). Per shape, on a fresh local-store folder, two real
`blast-log-aggregator serve` processes (tests/conftest.py's `AggregatorProc`) share the store:

- *typical*: pods x (`blast`, `results-export`) x 50 lines, each line its own batch (trickled);
- *chatty*: pods x 2 x `--chatty-lines` lines at 1 line/s of simulated time, in the batches the
  shipper's adaptive linger forms at that rate (two lines each; tests/shipper/test_shipper_linger.py);
- *flood*: pods x 1 container x `--flood-lines` lines in batches of 1,000;
- *wide*: `--wide-streams` streams (pods x `blast`) of 10 lines, one batch each.

Batches alternate between the replicas (`--senders` concurrent keep-alive POSTs). Then one timed
finalize on replica A (`wait_seconds` 0), whose answer is checked (complete; lines + omitted = lines
sent, per phase), and a re-finalize on replica B whose summary must be byte-identical. Reported:
ingest requests and time, staging objects before finalize, finalize and re-finalize seconds, each
replica's peak RSS (`VmHWM` from /proc: fresh processes per shape, so it is that shape's peak), and
the objects and bytes left in the store after cleanup (and how many of them are staging). Another
job's ingest latency on replica A (one small batch every 20 ms) is probed while idle (100 batches)
and during the finalize: its p99 in ms.
`--azurite-typical-pods N` also runs *typical* with N pods on a fresh Azurite (correctness on
Azure's API; Azurite is a poor stopwatch). Results: Markdown on stdout, JSON in bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import aiohttp
import orjson

BENCH: Final = Path(__file__).resolve().parent
ROOT: Final = BENCH.parent
sys.path.insert(0, str(ROOT))

from bench_aggregator import run_concurrently  # noqa: E402
from machine_info import write_results  # noqa: E402

from aggregator.auth import job_token  # noqa: E402
from tests.conftest import (  # noqa: E402
    TEST_ADMIN_TOKEN,
    TEST_SECRET,
    AggregatorProc,
    Azurite,
    aggregator_env,
    azurite_binary,
    free_port,
)

RESULTS: Final = BENCH / "results"
TS0: Final = 1_764_270_000.0
HTTP_TIMEOUT: Final = aiohttp.ClientTimeout(total=900)
CONTAINERS: Final = ("blast", "results-export")
Body = tuple[str, str, bytes]  # pod, container, JSON body


def line_text(stream: int, i: int) -> str:
    return f"stream {stream} line {i}: Query_{i % 97} hits {i * 7 % 1000} subject sequences, evalue 1e-{i % 50}"


def stream_batches(job_id: str, pod: str, ctr: str, stream: int, lines: int, per_batch: int,
                   step: float) -> list[bytes]:
    """One stream's batch bodies: `per_batch` lines each, a line every `step` seconds, eof on the last."""
    out: list[bytes] = []
    off = 0
    nbatches = -(-lines // per_batch)
    for seq in range(nbatches):
        events = []
        for i in range(seq * per_batch, min(lines, (seq + 1) * per_batch)):
            text = line_text(stream, i)
            events.append({"off": off, "ts": round(TS0 + stream * 0.001 + i * step, 4), "line": text})
            off += len(text) + 1
        last = seq == nbatches - 1
        body: dict[str, Any] = {"job_id": job_id, "pod": pod, "container": ctr, "phase": "running", "seq": seq,
                                "eof": last, "dropped": {"off": off, "lines": 0, "bytes": 0}, "events": events}
        if last:
            body["exit_code"] = 0
        out.append(orjson.dumps(body))
    return out


def interleave(per_stream: list[tuple[str, str, list[bytes]]]) -> Iterator[Body]:
    """Streams' batches round-robin, as many pods running at once send them."""
    depth = max(len(b) for _, _, b in per_stream)
    for k in range(depth):
        for pod, ctr, bodies in per_stream:
            if k < len(bodies):
                yield pod, ctr, bodies[k]


def shape_bodies(shape: str, job_id: str, args: argparse.Namespace) -> tuple[list[Body], dict[str, int], int]:
    """The shape's batches in sending order, lines sent per phase, and streams."""
    streams: list[tuple[str, str, int, int, float]] = []  # pod, container, lines, per batch, step
    if shape == "typical":
        streams = [(f"typ-{p}", c, 50, 1, 0.5) for p in range(args.typical_pods) for c in CONTAINERS]
    elif shape == "chatty":
        streams = [(f"chat-{p}", c, args.chatty_lines, 2, 1.0) for p in range(args.chatty_pods) for c in CONTAINERS]
    elif shape == "flood":
        streams = [(f"flood-{p}", "blast", args.flood_lines, 1000, 0.0005) for p in range(args.flood_pods)]
    elif shape == "wide":
        streams = [(f"wide-{p}", "blast", 10, 10, 0.1) for p in range(args.wide_streams)]
    per_stream = [(pod, ctr, stream_batches(job_id, pod, ctr, i, lines, per, step))
                  for i, (pod, ctr, lines, per, step) in enumerate(streams)]
    phases = {"running": sum(s[2] for s in streams)}
    exported = sum(s[2] for s in streams if s[1] == "results-export")
    if exported:
        phases["exporting_results"] = exported
    return list(interleave(per_stream)), phases, len(streams)


def vm_hwm_mib(pid: int | None) -> float:
    if pid is None:
        return 0.0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def tree_stats(root: Path) -> tuple[int, int, int]:
    """Objects, bytes, and staging objects under a local store's folder (temp files excluded)."""
    objects = size = staging = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if name.startswith(".tmp-"):
                continue
            objects += 1
            size += os.path.getsize(os.path.join(dirpath, name))
            staging += "/_staging/" in os.path.join(dirpath, name)
    return objects, size, staging


async def ingest(session: aiohttp.ClientSession, urls: list[str], job_id: str, bodies: list[Body],
                 senders: int) -> float:
    headers = {"Authorization": f"Bearer {job_token(TEST_SECRET, job_id)}", "Content-Type": "application/json"}
    numbered = list(enumerate(bodies))

    async def send(item: tuple[int, Body]) -> None:
        i, (_, _, body) = item
        async with session.post(urls[i % len(urls)] + "/v1/ingest", data=body, headers=headers) as resp:
            answer = await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"ingest answered {resp.status}: {answer[:300]!r}")

    return await run_concurrently(senders, numbered, send)


async def probe(session: aiohttp.ClientSession, url: str, job_id: str, stop: asyncio.Event | None,
                count: int) -> list[float]:
    """Another job's ingest latencies (ms): one small batch every 20 ms, `count` of them, or until `stop`."""
    headers = {"Authorization": f"Bearer {job_token(TEST_SECRET, job_id)}", "Content-Type": "application/json"}
    out: list[float] = []
    seq = 0
    while (stop is None and seq < count) or (stop is not None and not stop.is_set()):
        body = orjson.dumps({"job_id": job_id, "pod": "probe", "container": "blast", "phase": "running",
                             "seq": seq, "eof": False, "dropped": {"off": 0, "lines": 0, "bytes": 0},
                             "events": [{"off": seq, "ts": TS0 + seq, "line": f"probe {uuid.uuid4().hex}"}]})
        t0 = time.perf_counter()
        async with session.post(url + "/v1/ingest", data=body, headers=headers) as resp:
            await resp.read()
        out.append((time.perf_counter() - t0) * 1000)
        seq += 1
        await asyncio.sleep(0.02)
    return out


def p99(values: list[float]) -> float:
    return sorted(values)[int(0.99 * (len(values) - 1))] if values else 0.0


async def finalize(session: aiohttp.ClientSession, url: str, job_id: str,
                   phases: dict[str, int]) -> tuple[float, bytes]:
    headers = {"Authorization": f"Bearer {TEST_ADMIN_TOKEN}", "Content-Type": "application/json"}
    t0 = time.perf_counter()
    async with session.post(f"{url}/v1/jobs/{job_id}/finalize", data=b'{"wait_seconds": 0}',
                            headers=headers) as resp:
        answer = await resp.read()
    seconds = time.perf_counter() - t0
    if resp.status != 200:
        raise RuntimeError(f"finalize answered {resp.status}: {answer[:300]!r}")
    summary = orjson.loads(answer)
    if not summary["complete"]:
        raise RuntimeError(f"finalize of {job_id}: incomplete")
    for phase, sent in phases.items():
        step = summary["steps"][phase]
        if step["lines"] + step["omitted_lines"] != sent:
            raise RuntimeError(f"{phase}: {step['lines']} + {step['omitted_lines']} lines, not {sent}")
    return seconds, answer


async def run_shape(shape: str, args: argparse.Namespace, workdir: Path, store_url: str | None = None,
                    extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    job_id = f"elb-{shape}-{uuid.uuid4().hex[:6]}"
    bodies, phases, streams = shape_bodies(shape, job_id, args)
    root = workdir / f"store-{shape}-{uuid.uuid4().hex[:4]}"
    url = store_url or f"file://{root}"
    procs = [AggregatorProc(port=free_port(), env=aggregator_env(url, {"BLAST_LOGS_LOG_LEVEL": "WARNING",
                                                                       **(extra_env or {})}),
                            log_path=workdir / f"{shape}-{i}.log") for i in range(2)]
    for p in procs:
        p.start()
    try:
        async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as session:
            urls = [p.url for p in procs]
            ingest_s = await ingest(session, urls, job_id, bodies, args.senders)
            before = tree_stats(root / job_id) if store_url is None else (len(bodies), 0, len(bodies))
            idle = await probe(session, urls[0], f"probe-{job_id}", None, 100)
            stop = asyncio.Event()
            busy_task = asyncio.create_task(probe(session, urls[0], f"probe2-{job_id}", stop, 0))
            try:
                fin_s, first = await finalize(session, urls[0], job_id, phases)
            finally:
                stop.set()
                busy = await busy_task
            refin_s, again = await finalize(session, urls[1], job_id, phases)
            if again != first:
                raise RuntimeError("re-finalize on the other replica gave other bytes")
        after = tree_stats(root / job_id) if store_url is None else (0, 0, 0)
        rss = [round(vm_hwm_mib(p.proc.pid if p.proc else None), 1) for p in procs]
    finally:
        for p in procs:
            p.stop()
    return {"shape": shape, "store": "azurite" if store_url else "local", "streams": streams,
            "lines": phases["running"], "ingest_requests": len(bodies), "ingest_s": round(ingest_s, 2),
            "staging_objects": before[2], "finalize_s": round(fin_s, 2), "refinalize_s": round(refin_s, 2),
            "peak_rss_mib": rss,
            "probe_p99_ms": [round(p99(idle), 1), round(p99(busy), 1), len(busy)], "objects_after": after[0], "bytes_after": after[1], "staging_after": after[2]}


def markdown(rows: list[dict[str, Any]]) -> str:
    out = ["| store | shape | streams | lines | ingest requests (s) | staging objects | finalize s | re-finalize s "
           "| peak RSS MiB (A, B) | other job's ingest p99 ms idle / during finalize (n) "
           "| objects / MiB after cleanup (staging) |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        after = (f"{r['objects_after']:,} / {r['bytes_after'] / 2**20:.1f} ({r['staging_after']:,})"
                 if r["store"] == "local" else "–")
        out.append(f"| {r['store']} | {r['shape']} | {r['streams']:,} | {r['lines']:,} | {r['ingest_requests']:,} "
                   f"({r['ingest_s']}) | {r['staging_objects']:,} | {r['finalize_s']} | {r['refinalize_s']} | "
                   f"{r['peak_rss_mib'][0]:.0f}, {r['peak_rss_mib'][1]:.0f} | {r['probe_p99_ms'][0]} / "
                   f"{r['probe_p99_ms'][1]} ({r['probe_p99_ms'][2]}) | {after} |")
    return "\n".join(out) + "\n"


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-bigjob-") as tmp:
        workdir = Path(tmp)
        for shape in args.shapes.split(","):
            rows.append(await run_shape(shape, args, workdir))
            print(markdown(rows[-1:]).splitlines()[-1], flush=True)
        if args.azurite_typical_pods:
            binary = azurite_binary()
            if binary is None:
                print("no Azurite here: skipped", flush=True)
            else:
                azurite = Azurite(binary, free_port(), workdir / "azurite")
                azurite.start()
                try:
                    small = argparse.Namespace(**{**vars(args), "typical_pods": args.azurite_typical_pods})
                    container = "bigjob" + uuid.uuid4().hex[:8]
                    rows.append(await run_shape("typical", small, workdir, f"azure://{container}",
                                                {"BLAST_LOGS_AZURE_CONNECTION_STRING": azurite.connection_string}))
                finally:
                    azurite.stop()
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="typical,chatty,flood,wide")
    ap.add_argument("--typical-pods", type=int, default=1000)
    ap.add_argument("--chatty-pods", type=int, default=1000)
    ap.add_argument("--chatty-lines", type=int, default=3600)
    ap.add_argument("--flood-pods", type=int, default=100)
    ap.add_argument("--flood-lines", type=int, default=1_000_000)
    ap.add_argument("--wide-streams", type=int, default=20_000)
    ap.add_argument("--azurite-typical-pods", type=int, default=0)
    ap.add_argument("--senders", type=int, default=16)
    args = ap.parse_args()
    started = time.time()
    rows = asyncio.run(main_async(args))
    print()
    print(markdown(rows), end="")
    write_results(RESULTS, "bigjob", vars(args), rows, started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
