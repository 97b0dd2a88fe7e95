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
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiohttp
import orjson

BENCH: Final = Path(__file__).resolve().parent
ROOT: Final = BENCH.parent
sys.path.insert(0, str(ROOT))

from bench_aggregator import run_concurrently  # noqa: E402
from machine_info import write_results  # noqa: E402

from aggregator.artifacts import merge_states, state_of_batch  # noqa: E402
from aggregator.auth import job_token  # noqa: E402
from aggregator.ingest import parse_batch  # noqa: E402
from aggregator.staging import encode_batch, encode_compacted  # noqa: E402
from aggregator.storage import open_store  # noqa: E402
from aggregator.storage.layout import batch_key, compact_key, parse_staged_key, staging_prefix  # noqa: E402
from aggregator.storage.local import LocalStore  # noqa: E402
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


Spec = tuple[str, str, int, int, float]  # pod, container, lines, lines per batch, seconds between lines


def shape_streams(shape: str, args: argparse.Namespace) -> list[Spec]:
    if shape == "typical":
        return [(f"typ-{p}", c, args.typical_lines, 1, 0.5) for p in range(args.typical_pods) for c in CONTAINERS]
    if shape == "chatty":
        return [(f"chat-{p}", c, args.chatty_lines, 2, 1.0) for p in range(args.chatty_pods) for c in CONTAINERS]
    if shape == "flood":
        return [(f"flood-{p}", "blast", args.flood_lines, 1000, 0.0005) for p in range(args.flood_pods)]
    if shape == "wide":
        return [(f"wide-{p}", "blast", 10, 10, 0.1) for p in range(args.wide_streams)]
    raise ValueError(f"unknown shape {shape}")


def shape_phases(streams: list[Spec]) -> dict[str, int]:
    """Lines sent per phase."""
    phases = {"running": sum(s[2] for s in streams)}
    exported = sum(s[2] for s in streams if s[1] == "results-export")
    if exported:
        phases["exporting_results"] = exported
    return phases


def shape_bodies(shape: str, job_id: str, args: argparse.Namespace) -> tuple[list[Body], dict[str, int], int]:
    """The shape's batches in sending order, lines sent per phase, and streams."""
    streams = shape_streams(shape, args)
    per_stream = [(pod, ctr, stream_batches(job_id, pod, ctr, i, lines, per, step))
                  for i, (pod, ctr, lines, per, step) in enumerate(streams)]
    return list(interleave(per_stream)), shape_phases(streams), len(streams)


def settled_object(job_id: str, bodies: list[bytes]) -> tuple[str, bytes]:
    """What ingest of `bodies` (one stream's batches) leaves once its ingest-side compactions have settled,
    made by the aggregator's own functions: the batches `parse_batch` stores, merged (`merge_states`) into
    the compacted object covering all of them (`compact_key`, `encode_compacted`), or a lone batch as
    staged (`batch_key`, `encode_batch`: a one-object stream is never compacted)."""
    batches = [parse_batch(b, max_events=1000, max_line_chars=4000) for b in bodies]
    if len(batches) == 1:
        return batch_key(batches[0]), encode_batch(batches[0])
    names = [batch_key(b).rsplit("/", 1)[1] for b in batches]
    state = merge_states([state_of_batch(b) for b in batches])
    first = batches[0]
    return compact_key(job_id, first.pod, first.container, names, state.eof), encode_compacted(job_id, state, names)


async def direct_ingest(root: Path, job_id: str, streams: list[Spec]) -> tuple[int, float]:
    """Staging as HTTP ingest plus settled compactions leave it, written stream by stream straight into
    the local store (`settled_object`): the batch count it stands for, and seconds taken."""
    store = LocalStore(root)
    t0 = time.perf_counter()
    requests = 0
    for i, (pod, ctr, lines, per, step) in enumerate(streams):
        bodies = stream_batches(job_id, pod, ctr, i, lines, per, step)
        requests += len(bodies)
        key, data = await asyncio.to_thread(settled_object, job_id, bodies)
        await store.put(key, data, overwrite=False)
    return requests, time.perf_counter() - t0


def link_staged(staged: Path, root: Path) -> str | None:
    """The one job staged in `staged`, hard-linked into the fresh store `root`; None when none is."""
    jobs = [p.name for p in staged.iterdir() if p.is_dir()] if staged.exists() else []
    if not jobs:
        return None
    if len(jobs) != 1:
        raise RuntimeError(f"{staged} holds {len(jobs)} jobs, not one")
    root.mkdir(parents=True)
    subprocess.run(["cp", "-al", str(staged / jobs[0]), str(root / jobs[0])], check=True)
    return jobs[0]


async def reuse_staged(staged: Path, root: Path, job_id: str, specs: list[Spec]) -> tuple[str, int, float]:
    """`--staged DIR`: the direct staging of one job kept in DIR (made there by `direct_ingest` the first
    time), hard-linked into the run's fresh store (finalize writes new files and never changes a staged
    one, so the copy in DIR stays as staged). Its job id, the batch count it stands for, and the seconds
    `direct_ingest` took (0 when reused)."""
    ingest_s = 0.0
    linked = await asyncio.to_thread(link_staged, staged, root)
    if linked is None:
        _, ingest_s = await direct_ingest(staged, job_id, specs)
        linked = await asyncio.to_thread(link_staged, staged, root)
    assert linked is not None
    return linked, sum(-(-s[2] // s[3]) for s in specs), ingest_s


def staged_files(root: Path) -> list[Path]:
    """Staged batches and compacted objects under a local store's job folder."""
    return [f for f in root.glob("*/_staging/*/*/*.json") if f.name.startswith(("b-", "c-"))]


def staging_count(root: Path) -> int:
    """Staged batches and compacted objects under a local store's job folder (while compactions delete)."""
    return len(staged_files(root))


async def settled_remote(url: str, env: dict[str, str], job_id: str, streams: int,
                         seconds: float) -> tuple[int, int, float]:
    """`settled` for a store reached by URL (Azurite): staged objects at the start and at the end, seconds
    until one per stream is left (at most `seconds`)."""
    store = open_store(url, azure_connection_string=env.get("BLAST_LOGS_AZURE_CONNECTION_STRING"))
    try:
        t0 = time.perf_counter()
        first = -1
        while True:
            keys = await store.list_keys(staging_prefix(job_id))
            n = sum(1 for k in keys if parse_staged_key(job_id, k) is not None)
            first = n if first < 0 else first
            if n <= streams or time.perf_counter() - t0 >= seconds:
                return first, n, time.perf_counter() - t0
            await asyncio.sleep(1.0)
    finally:
        await store.close()


def staging_tree(root: Path) -> dict[str, bytes]:
    """Every staged object under a local store's job folder: relative path -> bytes."""
    return {str(f.relative_to(root)): f.read_bytes() for f in sorted(staged_files(root))}


async def settled(root: Path, streams: int, seconds: float = 120.0) -> float:
    """Seconds until staging holds one object per stream (compactions done), at most `seconds`."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        if staging_count(root) <= streams:
            break
        await asyncio.sleep(0.1)
    return time.perf_counter() - t0


def pid_of(proc: Any) -> int | None:
    """A replica's (`AggregatorProc`) process id, None when it is not running."""
    return proc.proc.pid if proc.proc else None


def tree_sum(pid: int | None, value: Callable[[int], float]) -> float:
    """`value` of the process and of each of its children (the finalize worker's child included) summed;
    one that ended meanwhile counts 0."""
    total = 0.0
    for p in [] if pid is None else [pid, *child_pids(pid)]:
        try:
            total += value(p)
        except OSError:
            pass
    return total


def _hwm_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next((int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:")), 0.0)


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def vm_hwm_mib(pid: int | None) -> float:
    """Peak RSS (VmHWM) of the process and its children summed: an upper bound of what they held at once,
    since their peaks may come at different times."""
    return tree_sum(pid, _hwm_mib)


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of the process and its children."""
    return tree_sum(pid, _cpu_s)


def child_pids(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for t in tasks:
        try:
            with open(f"/proc/{pid}/task/{t}/children") as f:
                out += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out + [g for c in out for g in child_pids(c)]


def disk_busy_ms() -> int:
    """Milliseconds the machine's disks have spent doing I/O (/proc/diskstats, whole disks), for the
    share of a finalize's wall time the disk was busy."""
    total = 0
    with open("/proc/diskstats") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 12 and parts[2].startswith(("vd", "sd", "nvme", "xvd")) and not parts[2][-1].isdigit():
                total += int(parts[12])
    return total


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


@dataclass
class Busy:
    """Whether a finalize is running; `flips` counts starts and ends (a probe that saw none was idle)."""

    on: bool = False
    flips: int = 0

    def set(self, on: bool) -> None:
        self.on = on
        self.flips += 1


async def probe(session: aiohttp.ClientSession, url: str, job_id: str, stop: asyncio.Event,
                busy: Busy) -> tuple[list[float], list[float]]:
    """Another job's ingest latencies (ms), one small batch every 20 ms until `stop`: those wholly
    outside any finalize (idle), and those that overlapped one (during)."""
    headers = {"Authorization": f"Bearer {job_token(TEST_SECRET, job_id)}", "Content-Type": "application/json"}
    idle: list[float] = []
    during: list[float] = []
    seq = 0
    while not stop.is_set():
        body = orjson.dumps({"job_id": job_id, "pod": "probe", "container": "blast", "phase": "running",
                             "seq": seq, "eof": False, "dropped": {"off": 0, "lines": 0, "bytes": 0},
                             "events": [{"off": seq, "ts": TS0 + seq, "line": f"probe {uuid.uuid4().hex}"}]})
        was, flips = busy.on, busy.flips
        t0 = time.perf_counter()
        async with session.post(url + "/v1/ingest", data=body, headers=headers) as resp:
            await resp.read()
        ms = (time.perf_counter() - t0) * 1000
        (during if was or busy.on or busy.flips != flips else idle).append(ms)
        seq += 1
        await asyncio.sleep(0.02)
    return idle, during


def pct(values: list[float], q: float) -> float:
    return sorted(values)[int(q * (len(values) - 1))] if values else 0.0


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


def start_replicas(url: str, workdir: Path, name: str, extra_env: dict[str, str] | None = None,
                   count: int = 2) -> list[AggregatorProc]:
    """`count` real aggregator processes on the store `url`, started (their logs `workdir/{name}-{i}.log`).
    Compactions start at once (`COMPACT_DELAY` 0, as the numbers in docs/benchmarks.md were taken):
    the default 30 s delay only moves them later."""
    procs = [AggregatorProc(port=free_port(), env=aggregator_env(url, {"BLAST_LOGS_LOG_LEVEL": "WARNING",
                                                                       "BLAST_LOGS_COMPACT_DELAY": "0",
                                                                       **(extra_env or {})}),
                            log_path=workdir / f"{name}-{i}.log") for i in range(count)]
    for p in procs:
        p.start()
    return procs


async def run_shape(shape: str, args: argparse.Namespace, workdir: Path, store_url: str | None = None,
                    extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """One shape: ingest (over HTTP, or `--direct`), settle, `--rounds` finalizes on replica A with idle
    windows of `--gap` seconds between them (another job's ingest probed throughout), a re-finalize on B."""
    job_id = f"elb-{shape}-{uuid.uuid4().hex[:6]}"
    specs = shape_streams(shape, args)
    phases = shape_phases(specs)
    direct = shape in args.direct.split(",") and store_url is None
    root = workdir / f"store-{shape}-{uuid.uuid4().hex[:4]}"
    url = store_url or f"file://{root}"
    if direct and args.staged:
        job_id, requests, ingest_s = await reuse_staged(Path(args.staged), root, job_id, specs)
        bodies: list[Body] = []
    elif direct:
        requests, ingest_s = await direct_ingest(root, job_id, specs)
        bodies = []
    else:
        bodies = shape_bodies(shape, job_id, args)[0]
        requests = len(bodies)
    procs = start_replicas(url, workdir, shape, extra_env)
    try:
        async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as session:
            urls = [p.url for p in procs]
            if not direct:
                ingest_s = await ingest(session, urls, job_id, bodies, args.senders)
                del bodies
            at_end = staging_count(root / job_id) if store_url is None else requests
            if store_url is None:
                settle_s = await settled(root / job_id, len(specs), args.settle)
            else:
                at_end, at_finalize, settle_s = await settled_remote(url, (extra_env or {}), job_id, len(specs),
                                                                     args.settle)
            before = tree_stats(root / job_id) if store_url is None else (at_finalize, 0, at_finalize)
            busy, stop = Busy(), asyncio.Event()
            probe_task = asyncio.create_task(probe(session, urls[0], f"probe-{job_id}", stop, busy))
            times: list[float] = []
            cpu = disk = 0.0
            try:
                for _ in range(args.rounds):
                    await asyncio.sleep(args.gap)
                    busy.set(True)
                    cpu0, disk0 = cpu_seconds(pid_of(procs[0])), disk_busy_ms()
                    try:
                        seconds, answer = await finalize(session, urls[0], job_id, phases)
                    finally:
                        busy.set(False)
                    if not times:
                        cpu = cpu_seconds(pid_of(procs[0])) - cpu0
                        disk = (disk_busy_ms() - disk0) / 1000
                    times.append(seconds)
                    if len(times) == 1:
                        first = answer
                    elif answer != first:
                        raise RuntimeError("a re-finalize gave other bytes")
                await asyncio.sleep(args.gap)
            finally:
                stop.set()
                idle, during = await probe_task
            refin_s, again = await finalize(session, urls[1], job_id, phases)
            if again != first:
                raise RuntimeError("re-finalize on the other replica gave other bytes")
        after = tree_stats(root / job_id) if store_url is None else (0, 0, 0)
        rss = [round(vm_hwm_mib(pid_of(p)), 1) for p in procs]
    finally:
        for p in procs:
            p.stop()
    return {"shape": shape, "store": "azurite" if store_url else "local", "ingest": "direct" if direct else "http",
            "streams": len(specs), "lines": phases["running"], "ingest_requests": requests,
            "ingest_s": round(ingest_s, 2), "staging_at_ingest_end": at_end, "settle_s": round(settle_s, 2),
            "staging_objects": before[2], "finalize_s": round(times[0], 2),
            "finalize_cpu_s": round(cpu, 2), "finalize_disk_busy_s": round(disk, 2),
            "finalize_again_s": [round(t, 2) for t in times[1:]], "refinalize_s": round(refin_s, 2),
            "peak_rss_mib": rss, "probe_ms": {"idle_p50": round(pct(idle, 0.5), 1), "idle_p99": round(pct(idle, 0.99), 1),
                                              "during_p50": round(pct(during, 0.5), 1),
                                              "during_p99": round(pct(during, 0.99), 1),
                                              "idle_n": len(idle), "during_n": len(during)},
            "objects_after": after[0], "bytes_after": after[1], "staging_after": after[2],
            "loadavg": os.getloadavg()}


def markdown(rows: list[dict[str, Any]]) -> str:
    out = ["| store | shape | ingest | streams | lines | ingest requests (s) | staging objects at ingest end / at "
           "finalize (settled after s) | finalize s (again on A) | first finalize: A's CPU s, disk busy s "
           "| re-finalize on B s | peak RSS MiB (A, B) "
           "| other job's ingest ms: idle p50 / p99 (n); during finalize p50 / p99 (n) "
           "| objects / MiB after cleanup (staging) | load |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        after = (f"{r['objects_after']:,} / {r['bytes_after'] / 2**20:.1f} ({r['staging_after']:,})"
                 if r["store"] == "local" else "–")
        pr = r["probe_ms"]
        again = ", ".join(map(str, r["finalize_again_s"]))
        out.append(f"| {r['store']} | {r['shape']} | {r['ingest']} | {r['streams']:,} | {r['lines']:,} | "
                   f"{r['ingest_requests']:,} ({r['ingest_s']}) | {r['staging_at_ingest_end']:,} / "
                   f"{r['staging_objects']:,} ({r['settle_s']}) | {r['finalize_s']} ({again}) | "
                   f"{r.get('finalize_cpu_s', '–')}, {r.get('finalize_disk_busy_s', '–')} | {r['refinalize_s']} | "
                   f"{r['peak_rss_mib'][0]:.0f}, {r['peak_rss_mib'][1]:.0f} | {pr['idle_p50']} / {pr['idle_p99']} "
                   f"({pr['idle_n']}); {pr['during_p50']} / {pr['during_p99']} ({pr['during_n']}) | {after} | "
                   f"{r['loadavg'][0]:.1f} |")
    return "\n".join(out) + "\n"


async def run_together(shape: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """`--together N`: N jobs of the shape staged (`--direct`, else over HTTP to both replicas), then their
    N finalizes sent at once to replica A: each one's seconds and A's peak RSS (a fresh process)."""
    jobs = [f"elb-{shape}-{k}-{uuid.uuid4().hex[:6]}" for k in range(args.together)]
    specs = shape_streams(shape, args)
    phases = shape_phases(specs)
    root = workdir / f"store-together-{shape}-{uuid.uuid4().hex[:4]}"
    direct = shape in args.direct.split(",")
    if direct:
        for job_id in jobs:
            await direct_ingest(root, job_id, specs)
    procs = start_replicas(f"file://{root}", workdir, f"together-{shape}")
    try:
        async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as session:
            urls = [p.url for p in procs]
            if not direct:
                for job_id in jobs:
                    await ingest(session, urls, job_id, shape_bodies(shape, job_id, args)[0], args.senders)
                for job_id in jobs:
                    await settled(root / job_id, len(specs), args.settle)
            a_pid = pid_of(procs[0])
            before = vm_hwm_mib(a_pid)
            t0 = time.perf_counter()
            answers = await asyncio.gather(*(finalize(session, urls[0], job_id, phases) for job_id in jobs))
            wall = time.perf_counter() - t0
            rss = vm_hwm_mib(a_pid)
    finally:
        for p in procs:
            p.stop()
    return {"shape": shape, "together": len(jobs), "ingest": "direct" if direct else "http", "streams": len(specs),
            "lines": phases["running"], "finalize_s": [round(a[0], 2) for a in answers], "wall_s": round(wall, 2),
            "peak_rss_mib_before": round(before, 1), "peak_rss_mib": round(rss, 1), "loadavg": os.getloadavg()}


async def check_direct(shape: str, args: argparse.Namespace, workdir: Path) -> str:
    """The staging HTTP ingest leaves once its compactions settled, against `direct_ingest`'s, for one
    job id: whether every staged object is the same, byte for byte."""
    job_id = f"elb-{shape}-{uuid.uuid4().hex[:6]}"
    specs = shape_streams(shape, args)
    http_root, direct_root = workdir / f"check-http-{shape}", workdir / f"check-direct-{shape}"
    await direct_ingest(direct_root, job_id, specs)
    procs = start_replicas(f"file://{http_root}", workdir, f"check-{shape}")
    try:
        async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as session:
            await ingest(session, [p.url for p in procs], job_id, shape_bodies(shape, job_id, args)[0], args.senders)
            await settled(http_root / job_id, len(specs), 300)
    finally:
        for p in procs:
            p.stop()
    over_http, direct = staging_tree(http_root / job_id), staging_tree(direct_root / job_id)
    same = sum(1 for k, v in direct.items() if over_http.get(k) == v)
    return (f"{shape}: {len(over_http):,} staged objects over HTTP, {len(direct):,} direct, "
            f"{same:,} identical (name and bytes)")


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-bigjob-") as tmp:
        workdir = Path(tmp)
        if args.together:
            for shape in args.shapes.split(","):
                rows.append(await run_together(shape, args, workdir))
                print(rows[-1], flush=True)
            return rows
        if args.check_direct:
            for shape in args.shapes.split(","):
                print(await check_direct(shape, args, workdir), flush=True)
            return rows
        for shape in [] if args.azurite_only else args.shapes.split(","):
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
                    small = argparse.Namespace(**{**vars(args), "typical_pods": args.azurite_typical_pods,
                                                  "typical_lines": args.azurite_typical_lines, "direct": ""})
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
    ap.add_argument("--typical-lines", type=int, default=50, help="lines (and batches) per typical stream")
    ap.add_argument("--azurite-typical-pods", type=int, default=0)
    ap.add_argument("--azurite-typical-lines", type=int, default=50)
    ap.add_argument("--azurite-only", action="store_true", help="skip the local-store shapes")
    ap.add_argument("--senders", type=int, default=16)
    ap.add_argument("--direct", default="", help="shapes whose staging is written straight into the local store "
                    "as settled ingest-side compaction leaves it (no HTTP; see `settled_object`)")
    ap.add_argument("--staged", default="", help="with --direct (one shape): keep the direct staging in this "
                    "folder and reuse it, hard-linked, on later runs (staging 100 flood streams takes 10-15 min)")
    ap.add_argument("--together", type=int, default=0,
                    help="instead: this many jobs of each shape finalized at once on replica A (its peak RSS)")
    ap.add_argument("--check-direct", action="store_true",
                    help="only compare, per shape, HTTP ingest's settled staging with --direct's, byte for byte")
    ap.add_argument("--settle", type=float, default=0.0,
                    help="wait up to this many seconds for ingest-side compactions to settle before finalize")
    ap.add_argument("--rounds", type=int, default=1, help="finalizes on replica A (the first is reported)")
    ap.add_argument("--gap", type=float, default=2.0, help="idle seconds before, between and after them")
    args = ap.parse_args()
    started = time.time()
    rows = asyncio.run(main_async(args))
    if not args.together and not args.check_direct:
        print()
        print(markdown(rows), end="")
    write_results(RESULTS, "bigjob", vars(args), rows, started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
