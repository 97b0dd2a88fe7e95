"""Aggregator benchmarks: ingest lines/s (local store, Azurite, raw Azurite uploads) and finalize time.

    .venv/bin/python bench/bench_aggregator.py [--reps 3] [--rep-lines 100000] [--senders 4]
                                               [--finalize-lines 1000000] [--no-azure-finalize]

Everything runs in one go, against real processes: the aggregator is the real
`python -m aggregator.cli serve` subprocess (started with tests/conftest.py's `AggregatorProc`,
log level INFO as in production, its JSON logs to a file), once on a local-store folder and once
on a fresh in-memory Azurite that this script starts (tests/conftest.py's `Azurite`).

- Batches are what a shipper sends: 1,000 events of 40-120 characters, 10 streams (5 pods x
  `blast`/`results-export`), `off` the running byte position, the last batch of each stream with
  `eof: true`, bodies JSON-encoded before the clock starts. `--senders` tasks take batches from
  one queue (streams interleaved) and POST them with the job's token over keep-alive connections.
- Ingest: per repetition, one fresh job of `--rep-lines` lines is sent to the service on the local
  store, then to the service on Azurite and, with the same concurrency, the same body bytes are
  uploaded straight to Azurite with azure-storage-blob aio `upload_blob` (the SDK default,
  If-None-Match: *, as the aggregator's put-if-absent). The service and raw runs alternate
  (service first in odd repetitions, raw first in even ones); the ratio is taken per repetition.
- Finalize: the first repetition's jobs (`--rep-lines` lines, local and Azurite) are finalized,
  then a job of `--finalize-lines` lines is ingested into the local store and finalized. Each is one
  timed `POST /v1/jobs/{id}/finalize` (`wait_seconds` 0: every stream already has its eof), and
  the answer is checked: complete, and lines + omitted lines = lines sent in every phase.

CPU seconds of the aggregator, Azurite and this script are taken from /proc around each run, so
the 2-core contention is visible. Results are printed as Markdown and written as JSON to
bench/results/ (gitignored).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Final

import aiohttp
import orjson

BENCH: Final = Path(__file__).resolve().parent
ROOT: Final = BENCH.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # the packages, and the tests' fixtures

from conftest import (  # noqa: E402
    TEST_ADMIN_TOKEN,
    TEST_SECRET,
    AggregatorProc,
    Azurite,
    aggregator_env,
    azurite_binary,
    free_port,
)
from machine_info import machine  # noqa: E402

from aggregator.auth import job_token  # noqa: E402

RESULTS: Final = BENCH / "results"
CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
BATCH_EVENTS: Final = 1000
PODS: Final = 5
CONTAINERS: Final = ("blast", "results-export")
STREAMS: Final = PODS * len(CONTAINERS)
MIN_CHARS, MAX_CHARS = 40, 120
LINE_POOL: Final = 20_000
TS0: Final = 1_764_270_000.0
WARMUP_BATCHES: Final = 20
HTTP_TIMEOUT: Final = aiohttp.ClientTimeout(total=600)
TARGET_RATIO: Final = 0.8
TARGET_FINALIZE_1M_S: Final = 15.0

WORDS: Final = (
    "blastn", "Query=", "Length=", "Score", "bits", "Expect", "Identities", "Gaps", "Strand=Plus/Minus",
    "Sbjct", "core_nt.00", "batch_017.fa", "Warning:", "[blastn]", "Examining", "5", "or", "more", "matches",
    "is", "recommended", "hits", "found", "Database:", "sequences;", "total", "letters", "azcopy", "copy",
    "https://elbstorage.blob.core.windows.net/results/", "100.0", "%", "Done.", "INFO", "2026-11-27T10:15:02Z",
    "queries", "processed", "threads", "-evalue", "1e-05", "-outfmt", "6", "-max_target_seqs", "500",
    "NC_045512.2", "MN908947.3", "gi|1798174254|ref|", "ACGTTGCAAGGCTTAACGGATTCCAAGT", "elapsed", "s",
)


# ---- data ----------------------------------------------------------------------------------------


def line_pool(seed: int = 7) -> list[str]:
    """Distinct log-like lines of 40-120 characters (ASCII, as BLAST and azcopy write)."""
    rng = random.Random(seed)
    pool = []
    for i in range(LINE_POOL):
        want = rng.randint(MIN_CHARS, MAX_CHARS)
        words = [f"{i:05d}"]
        while sum(map(len, words)) + len(words) < want:
            words.append(rng.choice(WORDS))
        pool.append(" ".join(words)[:want])
    return pool


def job_bodies(job_id: str, lines: int, pool: list[str]) -> list[tuple[str, str, bytes]]:
    """(pod, container, JSON body) of a job's batches in sending order: streams interleaved, eof last."""
    per_stream = lines // STREAMS
    nbatches = -(-per_stream // BATCH_EVENTS)
    streams = [(f"blastn-batch-job-{p}-{uuid.uuid4().hex[:5]}", c) for p in range(PODS) for c in CONTAINERS]
    pos = dict.fromkeys(streams, 0)
    out: list[tuple[str, str, bytes]] = []
    k = 0
    for seq in range(nbatches):
        for pod, ctr in streams:
            n = min(BATCH_EVENTS, per_stream - seq * BATCH_EVENTS)
            events = []
            off = pos[(pod, ctr)]
            for _ in range(n):
                line = pool[k % len(pool)]
                events.append({"off": off, "ts": round(TS0 + k * 0.0005, 4), "line": line})
                off += len(line) + 1
                k += 1
            pos[(pod, ctr)] = off
            body = {"job_id": job_id, "pod": pod, "container": ctr, "phase": "running", "seq": seq,
                    "eof": seq == nbatches - 1, "dropped": {"off": off, "lines": 0, "bytes": 0},
                    "events": events}
            out.append((pod, ctr, orjson.dumps(body)))
    return out


# ---- measurement ---------------------------------------------------------------------------------


def proc_cpu(pid: int | None) -> float:
    """user+sys CPU seconds of a process (0.0 when unknown or gone)."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


def self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


@dataclass
class Run:
    """One timed run: what was sent, how long it took, and who spent the CPU."""

    kind: str
    rep: int
    lines: int
    batches: int
    body_bytes: int
    seconds: float
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def lines_per_s(self) -> float:
        return self.lines / self.seconds


class Cpu:
    """CPU seconds spent by the aggregator(s), Azurite and this script between start() and stop()."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = pids
        self.before: dict[str, float] = {}

    def start(self) -> None:
        self.before = {name: proc_cpu(pid) for name, pid in self.pids.items()} | {"bench": self_cpu()}

    def stop(self) -> dict[str, float]:
        after = {name: proc_cpu(pid) for name, pid in self.pids.items()} | {"bench": self_cpu()}
        return {name: round(after[name] - self.before[name], 2) for name in after}


async def run_concurrently(senders: int, items: list[Any], send: Callable[[Any], Awaitable[None]]) -> float:
    """Feed `items` to `senders` workers; the wall time until the last one is done."""
    queue: asyncio.Queue[Any] = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)

    async def worker() -> None:
        while True:
            try:
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            await send(item)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(senders)))
    return time.perf_counter() - t0


async def ingest(session: aiohttp.ClientSession, url: str, job_id: str,
                 bodies: list[tuple[str, str, bytes]], senders: int) -> float:
    headers = {"Authorization": f"Bearer {job_token(TEST_SECRET, job_id)}", "Content-Type": "application/json"}

    async def send(item: tuple[str, str, bytes]) -> None:
        async with session.post(url + "/v1/ingest", data=item[2], headers=headers) as resp:
            answer = await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"ingest answered {resp.status}: {answer[:300]!r}")
            if orjson.loads(answer).get("duplicate"):
                raise RuntimeError("a fresh batch was reported as a duplicate")

    return await run_concurrently(senders, bodies, send)


async def raw_upload(container: Any, job_id: str, bodies: list[tuple[str, str, bytes]], senders: int) -> float:
    names = [(f"raw/{job_id}/{pod}/{ctr}/{i}.json", body) for i, (pod, ctr, body) in enumerate(bodies)]

    async def send(item: tuple[str, bytes]) -> None:
        await container.upload_blob(item[0], item[1])

    return await run_concurrently(senders, names, send)


async def finalize(session: aiohttp.ClientSession, url: str, job_id: str, lines: int) -> tuple[float, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {TEST_ADMIN_TOKEN}", "Content-Type": "application/json"}
    t0 = time.perf_counter()
    async with session.post(f"{url}/v1/jobs/{job_id}/finalize", data=b'{"wait_seconds": 0}',
                            headers=headers) as resp:
        answer = await resp.read()
    seconds = time.perf_counter() - t0
    if resp.status != 200:
        raise RuntimeError(f"finalize answered {resp.status}: {answer[:300]!r}")
    summary: dict[str, Any] = orjson.loads(answer)
    if not summary["complete"]:
        raise RuntimeError(f"finalize of {job_id}: incomplete {summary['incomplete_streams']}")
    for phase, step in summary["steps"].items():
        fed = lines if phase == "running" else lines // len(CONTAINERS)
        if step["lines"] + step["omitted_lines"] != fed:
            raise RuntimeError(f"finalize of {job_id}: {phase} accounts for "
                               f"{step['lines']} + {step['omitted_lines']} lines, not {fed}")
    return seconds, summary


# ---- the whole run -------------------------------------------------------------------------------


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def summarise(runs: list[Run], kind: str) -> dict[str, float]:
    rates = [r.lines_per_s for r in runs if r.kind == kind]
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates)}


async def bench(args: argparse.Namespace, workdir: Path, report: dict[str, Any]) -> None:
    from azure.storage.blob.aio import ContainerClient

    binary = azurite_binary()
    if binary is None:
        raise SystemExit("azurite-blob is not installed (.tools/node_modules/.bin/azurite-blob)")
    pool = line_pool()
    azurite = Azurite(binary=binary, port=free_port())
    azurite.start()
    local = AggregatorProc(free_port(), aggregator_env(f"file://{workdir / 'store'}"), workdir / "agg-local.log")
    azure = AggregatorProc(free_port(), aggregator_env("azure://bench-agg", {
        "BLAST_LOGS_AZURE_CONNECTION_STRING": azurite.connection_string}), workdir / "agg-azure.log")
    raw = ContainerClient.from_connection_string(azurite.connection_string, "bench-raw")
    try:
        local.start()
        azure.start()
        await raw.create_container()
        pids: dict[str, int | None] = {
            "agg_local": local.proc.pid if local.proc else None,
            "agg_azure": azure.proc.pid if azure.proc else None,
            "azurite": azurite.proc.pid if azurite.proc else None,
        }
        cpu = Cpu(pids)
        runs: list[Run] = []
        jobs: dict[str, str] = {}
        connector = aiohttp.TCPConnector(limit=args.senders)
        async with aiohttp.ClientSession(connector=connector, timeout=HTTP_TIMEOUT) as session:
            # Warm every path (connections, SDK clients, Azurite's container) before any clock runs.
            warm = job_bodies("bench-warmup", WARMUP_BATCHES * BATCH_EVENTS, pool)
            await ingest(session, local.url, "bench-warmup", warm, args.senders)
            await ingest(session, azure.url, "bench-warmup", warm, args.senders)
            await raw_upload(raw, "bench-warmup", warm, args.senders)

            async def timed(kind: str, rep: int, bodies: list[tuple[str, str, bytes]],
                            go: Callable[[], Awaitable[float]]) -> None:
                cpu.start()
                seconds = await go()
                lines = sum(b.count(b'"line":') for _, _, b in bodies)
                run = Run(kind, rep, lines, len(bodies), sum(len(b) for _, _, b in bodies), seconds, cpu.stop())
                runs.append(run)
                print(f"  rep {rep} {kind:13} {run.lines_per_s:>9,.0f} lines/s  ({seconds:.2f} s, "
                      f"cpu {run.cpu})", flush=True)

            for rep in range(1, args.reps + 1):
                print(f"repetition {rep} (load average {loadavg()})", flush=True)
                lj, aj, rj = (f"bench-{kind}-{rep}-{uuid.uuid4().hex[:6]}" for kind in ("local", "azure", "raw"))
                lb, ab = job_bodies(lj, args.rep_lines, pool), job_bodies(aj, args.rep_lines, pool)
                jobs.setdefault("local", lj)
                jobs.setdefault("azure", aj)
                await timed("local", rep, lb,
                            partial(ingest, session, local.url, lj, lb, args.senders))
                pair: list[tuple[str, Callable[[], Awaitable[float]]]] = [
                    ("azure", partial(ingest, session, azure.url, aj, ab, args.senders)),
                    # Byte for byte the bodies the service got in this repetition.
                    ("raw_azurite", partial(raw_upload, raw, rj, ab, args.senders)),
                ]
                for kind, go in pair if rep % 2 else pair[::-1]:
                    await timed(kind, rep, ab, go)

            report["ingest"] = [asdict(r) | {"lines_per_s": round(r.lines_per_s)} for r in runs]
            ratios = []
            for rep in range(1, args.reps + 1):
                svc = next(r for r in runs if r.rep == rep and r.kind == "azure")
                base = next(r for r in runs if r.rep == rep and r.kind == "raw_azurite")
                ratios.append(svc.lines_per_s / base.lines_per_s)
            report["ingest_summary"] = {k: summarise(runs, k) for k in ("local", "azure", "raw_azurite")}
            report["ratio"] = {"per_rep": [round(r, 3) for r in ratios], "median": round(statistics.median(ratios), 3),
                               "min": round(min(ratios), 3), "max": round(max(ratios), 3)}

            fin: list[dict[str, Any]] = []

            async def timed_finalize(store: str, url: str, job_id: str, lines: int) -> None:
                print(f"finalize {lines:,} lines on {store} (load average {loadavg()})", flush=True)
                cpu.start()
                seconds, summary = await finalize(session, url, job_id, lines)
                used = cpu.stop()
                chunks = sum(step["chunks"] for step in summary["steps"].values())
                fin.append({"store": store, "lines": lines, "seconds": round(seconds, 2), "chunks": chunks,
                            "cpu": used, "load": loadavg()})
                print(f"  {seconds:.2f} s, {chunks} chunks, cpu {used}", flush=True)

            await timed_finalize("local", local.url, jobs["local"], args.rep_lines)
            if not args.no_azure_finalize:
                await timed_finalize("azurite", azure.url, jobs["azure"], args.rep_lines)
            for lines in args.finalize_lines:
                big = f"bench-big-{lines}-{uuid.uuid4().hex[:6]}"
                bodies = job_bodies(big, lines, pool)
                print(f"ingesting {lines:,} lines into the local store", flush=True)
                cpu.start()
                seconds = await ingest(session, local.url, big, bodies, args.senders)
                used = cpu.stop()
                report.setdefault("big_ingest", []).append(
                    {"lines": lines, "seconds": round(seconds, 2), "lines_per_s": round(lines / seconds), "cpu": used})
                print(f"  {lines / seconds:,.0f} lines/s ({seconds:.2f} s)", flush=True)
                del bodies
                await timed_finalize("local", local.url, big, lines)
            report["finalize"] = fin
    finally:
        await raw.close()
        for proc in (local, azure):
            proc.stop()
        azurite.stop()


def markdown(report: dict[str, Any]) -> str:
    out = [f"Load average: {report['load_before']} before, {report['load_after']} after.", "",
           "| ingest | lines/s (median) | range | agg CPU s | Azurite CPU s | bench CPU s |",
           "|---|---:|---:|---:|---:|---:|"]
    for kind, label in (("local", "service, local store"), ("azure", "service, Azurite"),
                        ("raw_azurite", "raw upload_blob, Azurite")):
        s = report["ingest_summary"][kind]
        runs = [r for r in report["ingest"] if r["kind"] == kind]
        agg = statistics.median(r["cpu"].get("agg_local" if kind == "local" else "agg_azure", 0.0) for r in runs)
        azc = statistics.median(r["cpu"].get("azurite", 0.0) for r in runs)
        bc = statistics.median(r["cpu"].get("bench", 0.0) for r in runs)
        out.append(f"| {label} | {s['median']:,.0f} | {s['min']:,.0f}-{s['max']:,.0f} | {agg:.2f} | {azc:.2f} | {bc:.2f} |")
    r = report["ratio"]
    out += ["", f"Service on Azurite / raw uploads, per repetition: {', '.join(map(str, r['per_rep']))} "
                f"(median {r['median']}, target >= {TARGET_RATIO})", "",
            "| finalize | lines | seconds | chunks | agg CPU s | load |", "|---|---:|---:|---:|---:|---|"]
    for f in report["finalize"]:
        aggcpu = f["cpu"].get("agg_local" if f["store"] == "local" else "agg_azure", 0.0)
        out.append(f"| {f['store']} | {f['lines']:,} | {f['seconds']:.2f} | {f['chunks']} | {aggcpu:.2f} | {f['load']} |")
    for b in report.get("big_ingest", []):
        out.append(f"\n(Ingesting the {b['lines']:,}-line job into the local store: {b['lines_per_s']:,} lines/s.)")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--rep-lines", type=int, default=100_000, help="lines per ingest repetition (10 streams)")
    parser.add_argument("--senders", type=int, default=4, help="concurrent senders")
    parser.add_argument("--finalize-lines", type=lambda s: [int(x) for x in s.split(",") if x],
                        default=[1_000_000], help="comma-separated sizes of extra jobs to finalize (local store)")
    parser.add_argument("--no-azure-finalize", action="store_true")
    args = parser.parse_args()
    report: dict[str, Any] = {"machine": machine(), "args": vars(args), "load_before": loadavg(),
                              "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    print(f"machine: {report['machine']}, load average {report['load_before']}", flush=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-agg-") as tmp:
        asyncio.run(bench(args, Path(tmp), report))
    report["load_after"] = loadavg()
    report["total_seconds"] = round(time.perf_counter() - t0, 1)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"aggregator-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2))
    print()
    print(markdown(report))
    print(f"\ntotal {report['total_seconds']} s; JSON in {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
