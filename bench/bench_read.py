"""Reading logs back (issue 20): follow lag over two replicas, and a big job's memory on the read side.

    .venv/bin/python bench/bench_read.py [--streams 50] [--rate 1000] [--seconds 30]
        [--big-lines 1000000] [--big-streams 10]

*Lag*: two real `blast-log-aggregator serve` processes share a local store. `--streams` streams write
`--rate` lines/s in all, each stream sending a batch every 0.3 s (the shipper's linger) to replica A, each
line's `ts` the time it was written in the pod (spread over the linger before its batch was sent); a follower (`GET /logs?follow=1`, SSE) on replica B notes when each line
arrives. Reported: p50/p99/max of arrival minus `ts`, and that every line came once.

*Big job*: `--big-lines` lines over `--big-streams` streams staged (1,000-line batches) on a fresh store,
then on a fresh aggregator: `/streams`, a `tail=100` page, and a follow that streams every line to its end
event. Reported: each one's seconds and the aggregator's peak RSS (`VmHWM`) after it.
Results: Markdown on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import aiohttp
import orjson

BENCH: Final = Path(__file__).resolve().parent
ROOT: Final = BENCH.parent
sys.path.insert(0, str(ROOT))

from bench_bigjob import vm_hwm_mib  # noqa: E402
from machine_info import machine  # noqa: E402

from aggregator.auth import job_token, read_token  # noqa: E402
from aggregator.model import StoredBatch  # noqa: E402
from aggregator.staging import encode_batch  # noqa: E402
from aggregator.storage import LocalStore  # noqa: E402
from aggregator.storage.layout import batch_key  # noqa: E402
from tests.conftest import TEST_SECRET, AggregatorProc, aggregator_env, free_port  # noqa: E402

LINGER: Final = 0.3
TIMEOUT = aiohttp.ClientTimeout(total=None, sock_read=120)


def start(url: str, work: Path, name: str) -> AggregatorProc:
    p = AggregatorProc(port=free_port(), env=aggregator_env(url, {"BLAST_LOGS_LOG_LEVEL": "WARNING"}),
                       log_path=work / f"{name}.log")
    p.start()
    return p


async def sse_lines(resp: aiohttp.ClientResponse) -> Any:
    """(event, [data docs]) of each SSE event."""
    kind, data = "message", []
    async for raw in resp.content:
        line = raw.rstrip(b"\n")
        if not line:
            if data or kind != "message":
                yield kind, data
            kind, data = "message", []
        elif line.startswith(b"event: "):
            kind = line[7:].decode()
        elif line.startswith(b"data: "):
            data.append(orjson.loads(line[6:]))


async def lag(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    url = f"file://{work / 'lag-store'}"
    a, b = start(url, work, "lag-a"), start(url, work, "lag-b")
    job = "elb-lag"
    per_batch = max(1, round(args.rate / args.streams * LINGER))
    arrivals: list[float] = []
    seen: set[tuple[str, str]] = set()
    dupes = 0
    try:
        async with aiohttp.ClientSession(timeout=TIMEOUT) as s:
            ingest = {"Authorization": f"Bearer {job_token(TEST_SECRET, job)}", "Content-Type": "application/json"}

            async def writer(i: int) -> None:
                off, seq = 0, 0
                end = time.monotonic() + args.seconds
                await asyncio.sleep(LINGER * i / args.streams)
                while True:
                    last = time.monotonic() >= end
                    now = time.time()
                    # Written in the pod spread over the linger the shipper waited before sending them.
                    evs = [{"off": off + k, "ts": now - LINGER * (1 - (k + 1) / per_batch), "line": f"s{i} {off + k}"}
                           for k in range(per_batch)]
                    body = {"job_id": job, "pod": f"pod-{i}", "container": "blast", "phase": "running", "seq": seq,
                            "eof": last, "events": [] if last else evs}
                    async with s.post(a.url + "/v1/ingest", data=orjson.dumps(body), headers=ingest) as r:
                        assert r.status == 200, await r.text()
                    if last:
                        return
                    off, seq = off + per_batch, seq + 1
                    await asyncio.sleep(LINGER)

            async def follower() -> None:
                nonlocal dupes
                headers = {"Authorization": f"Bearer {read_token(TEST_SECRET, job)}"}
                while True:
                    async with s.get(b.url + f"/v1/jobs/{job}/logs?follow=1", headers=headers) as r:
                        if r.status == 404:
                            await asyncio.sleep(0.05)
                            continue
                        async for kind, data in sse_lines(r):
                            now = time.time()
                            for d in data if kind == "log" else []:
                                key = (d["pod"], d["line"])
                                dupes += key in seen
                                seen.add(key)
                                arrivals.append(now - d["ts"])
                            if kind == "end":
                                return

            follow = asyncio.ensure_future(follower())
            await asyncio.gather(*(writer(i) for i in range(args.streams)))
            await asyncio.wait_for(follow, 60)
    finally:
        a.kill()
        b.kill()
    q = statistics.quantiles(arrivals, n=100)
    return {"lines": len(arrivals), "unique": len(seen), "duplicates": dupes, "p50": q[49], "p99": q[98],
            "max": max(arrivals), "lines_per_s": len(arrivals) / args.seconds}


async def big(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    root = work / "big-store"
    job = "elb-big"
    store = LocalStore(root)
    per_stream = args.big_lines // args.big_streams
    t0 = time.monotonic()
    for i in range(args.big_streams):
        for seq, start_off in enumerate(range(0, per_stream, 1000)):
            n = min(1000, per_stream - start_off)
            evs = tuple((start_off + k, 1_764_270_000.0 + start_off + k, f"pod-{i} line {start_off + k} " + "x" * 40)
                        for k in range(n))
            eof = start_off + n >= per_stream
            b = StoredBatch(job, f"pod-{i}", "blast", "running", seq, eof, 0 if eof else None, None, evs)
            await store.put(batch_key(b), encode_batch(b))
    await store.close()
    staged_s = time.monotonic() - t0
    agg = start(f"file://{root}", work, "big")
    out: dict[str, Any] = {"lines": per_stream * args.big_streams, "streams": args.big_streams,
                           "stage_s": staged_s, "rss_idle": vm_hwm_mib(agg.proc.pid if agg.proc else None)}
    headers = {"Authorization": f"Bearer {read_token(TEST_SECRET, job)}"}
    pid = agg.proc.pid if agg.proc else None
    try:
        async with aiohttp.ClientSession(timeout=TIMEOUT) as s:
            t = time.monotonic()
            async with s.get(agg.url + f"/v1/jobs/{job}/streams", headers=headers) as r:
                doc = await r.json()
            out["streams_s"], out["rss_streams"] = time.monotonic() - t, vm_hwm_mib(pid)
            assert sum(x["lines"] for x in doc["streams"]) == out["lines"]
            t = time.monotonic()
            async with s.get(agg.url + f"/v1/jobs/{job}/logs?tail=100", headers=headers) as r:
                assert len((await r.read()).splitlines()) == 100
            out["tail_s"], out["rss_tail"] = time.monotonic() - t, vm_hwm_mib(pid)
            t = time.monotonic()
            n = 0
            async with s.get(agg.url + f"/v1/jobs/{job}/logs?follow=1", headers=headers) as r:
                async for kind, data in sse_lines(r):
                    n += len(data) if kind == "log" else 0
                    if kind == "end":
                        break
            assert n == out["lines"], n
            out["follow_s"], out["rss_follow"] = time.monotonic() - t, vm_hwm_mib(pid)
    finally:
        agg.kill()
    return out


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--streams", type=int, default=50)
    p.add_argument("--rate", type=float, default=1000)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--big-lines", type=int, default=1_000_000)
    p.add_argument("--big-streams", type=int, default=10)
    p.add_argument("--skip", default="", help="comma-separated: lag, big")
    args = p.parse_args()
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory(prefix="bench-read-") as tmp:
        work = Path(tmp)
        if "lag" not in args.skip:
            r = await lag(args, work)
            print(f"\n| follow lag, {args.streams} streams, {r['lines_per_s']:.0f} lines/s, {args.seconds:g} s, "
                  "two replicas | value |\n|---|---|")
            for k in ("lines", "unique", "duplicates"):
                print(f"| {k} | {r[k]} |")
            for k in ("p50", "p99", "max"):
                print(f"| lag {k} | {r[k]:.3f} s |")
        if "big" not in args.skip:
            r = await big(args, work)
            print(f"\n| big job: {r['lines']:,} lines, {r['streams']} streams | seconds | aggregator peak RSS |"
                  "\n|---|---|---|")
            print(f"| idle (fresh process) | | {r['rss_idle']:.0f} MiB |")
            print(f"| GET /streams | {r['streams_s']:.1f} | {r['rss_streams']:.0f} MiB |")
            print(f"| GET /logs?tail=100 | {r['tail_s']:.1f} | {r['rss_tail']:.0f} MiB |")
            print(f"| follow, every line to the end event | {r['follow_s']:.1f} | {r['rss_follow']:.0f} MiB |")


if __name__ == "__main__":
    asyncio.run(main())
