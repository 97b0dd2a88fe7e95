"""Issue 16's target: ten times more batches for the same streams and lines costs at most 1.25x the
storage operations and time at finalize.

    .venv/bin/python bench/bench_batches.py [--pods 100] [--lines 50] [--batches 1,10] [--senders 16]

Per batch count, on a fresh local-store folder, two real replicas (bench_bigjob's setup) receive
pods x (`blast`, `results-export`) streams of `--lines` lines, each stream cut into that many batches
(round-robin over the replicas). The bench waits until the replicas' background (ingest-side)
compactions have settled (staging holds one object per stream) and `--pause` seconds, then times one finalize and reads
`blast_logs_aggregator_storage_operations_total{phase="finalize"}` from both replicas' /metrics
(before and after: the difference). Reported per batch count: ingest requests, staging objects at
ingest's end and at finalize, finalize seconds and storage operations by kind; then the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from statistics import median
from typing import Any, Final

import aiohttp

BENCH: Final = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from bench_bigjob import (  # noqa: E402
    CONTAINERS,
    HTTP_TIMEOUT,
    RESULTS,
    direct_ingest,
    finalize,
    ingest,
    interleave,
    settled,
    staging_count,
    start_replicas,
    stream_batches,
)
from machine_info import write_results  # noqa: E402

OPS_METRIC: Final = "blast_logs_aggregator_storage_operations_total"


async def finalize_ops(session: aiohttp.ClientSession, urls: list[str]) -> dict[str, float]:
    """Storage operations counted under phase `finalize`, by kind, summed over the replicas."""
    out: dict[str, float] = {}
    for url in urls:
        async with session.get(url + "/metrics") as resp:
            text = await resp.text()
        for line in text.splitlines():
            if line.startswith(OPS_METRIC + "{") and 'phase="finalize"' in line:
                op = line.split('op="', 1)[1].split('"', 1)[0]
                out[op] = out.get(op, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


async def run(args: argparse.Namespace, nbatches: int, workdir: Path, rep: int = 0) -> dict[str, Any]:
    job_id = f"elb-batches-{nbatches}-{uuid.uuid4().hex[:6]}"
    per = -(-args.lines // nbatches)
    streams = [(f"pod-{p}", c) for p in range(args.pods) for c in CONTAINERS]
    phases = {"running": args.pods * 2 * args.lines, "exporting_results": args.pods * args.lines}
    root = workdir / f"store-{nbatches}-{rep}"
    if args.direct:  # staging as settled ingest-side compaction leaves it (bench_bigjob --check-direct)
        requests, direct_s = await direct_ingest(root, job_id, [(pod, ctr, args.lines, per, 0.5) for pod, ctr in streams])
        bodies: list[Any] = []
    else:
        bodies = list(interleave([(pod, ctr, stream_batches(job_id, pod, ctr, i, args.lines, per, 0.5))
                                  for i, (pod, ctr) in enumerate(streams)]))
        requests = len(bodies)
    procs = start_replicas(f"file://{root}", workdir, f"batches-{nbatches}-{rep}")
    try:
        async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as session:
            urls = [p.url for p in procs]
            ingest_s = direct_s if args.direct else await ingest(session, urls, job_id, bodies, args.senders)
            at_ingest_end = staging_count(root / job_id)
            settle_s = await settled(root / job_id, len(streams))
            at_finalize = staging_count(root / job_id)
            await asyncio.sleep(args.pause)
            before = await finalize_ops(session, urls)
            fin_s, _ = await finalize(session, urls[0], job_id, phases)
            after = await finalize_ops(session, urls)
            refin = [(await finalize(session, urls[0], job_id, phases))[0] for _ in range(args.refinalizes)]
            fresh = start_replicas(f"file://{root}", workdir, f"batches-{nbatches}-{rep}-fresh", count=1)[0]
            procs.append(fresh)
            fresh_s, _ = await finalize(session, fresh.url, job_id, phases)
    finally:
        for p in procs:
            p.stop()
    ops = {k: int(after.get(k, 0) - before.get(k, 0)) for k in sorted(after)}
    return {"batches_per_stream": nbatches, "rep": rep, "streams": len(streams), "lines": phases["running"],
            "ingest": "direct" if args.direct else "http",
            "ingest_requests": requests, "ingest_s": round(ingest_s, 2), "staging_at_ingest_end": at_ingest_end,
            "settle_s": round(settle_s, 2), "staging_at_finalize": at_finalize, "finalize_s": round(fin_s, 3),
            "refinalize_s": round(median(refin), 3) if refin else 0.0, "refinalize_all_s": [round(t, 3) for t in refin],
            "fresh_replica_finalize_s": round(fresh_s, 3), "loadavg": os.getloadavg()[0],
            "finalize_ops": ops, "finalize_ops_total": sum(ops.values())}


def markdown(rows: list[dict[str, Any]]) -> str:
    out = ["| batches per stream | streams | lines | ingest requests (s) | staging objects at ingest end / "
           "at finalize (compactions settled after s) | finalize s (re-finalize; on a fresh replica) | storage operations at finalize (get, put, "
           "delete, list) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        o = r["finalize_ops"]
        out.append(f"| {r['batches_per_stream']} | {r['streams']:,} | {r['lines']:,} | {r['ingest_requests']:,} "
                   f"({r['ingest_s']}) | {r['staging_at_ingest_end']:,} / {r['staging_at_finalize']:,} "
                   f"({r['settle_s']}) | {r['finalize_s']} ({r['refinalize_s']}; {r['fresh_replica_finalize_s']}) | {r['finalize_ops_total']:,} ({o.get('get', 0):,}, "
                   f"{o.get('put', 0):,}, {o.get('delete', 0):,}, {o.get('list', 0):,}) |")
    if len({r["batches_per_stream"] for r in rows}) >= 2:
        a = min(rows, key=lambda r: r["batches_per_stream"])
        b = max(rows, key=lambda r: r["batches_per_stream"])
        out.append("")
        out.append(f"{b['batches_per_stream']}x / {a['batches_per_stream']}x batches: operations "
                   f"{b['finalize_ops_total'] / max(a['finalize_ops_total'], 1):.2f}x, finalize time "
                   f"{b['finalize_s'] / max(a['finalize_s'], 1e-9):.2f}x")
    return "\n".join(out) + "\n"


def summary(rows: list[dict[str, Any]]) -> str:
    """Over the reps: per batch count, the median (range) of first finalize, of re-finalizes and of a fresh
    replica's; the ratios of the medians, and each rep's own ratio (its runs were next to each other)."""
    counts = sorted({r["batches_per_stream"] for r in rows})
    by = {n: [r for r in rows if r["batches_per_stream"] == n] for n in counts}
    out = ["| batches per stream | runs | finalize s: median (range) | re-finalize s: median (range) "
           "| fresh replica s: median (range) | load (range) |", "|---|---|---|---|---|---|"]

    def mr(values: list[float]) -> str:
        return f"{median(values):.3f} ({min(values):.3f}-{max(values):.3f})"

    for n in counts:
        rs = by[n]
        refin = [t for r in rs for t in r["refinalize_all_s"]]
        out.append(f"| {n} | {len(rs)} | {mr([r['finalize_s'] for r in rs])} | {mr(refin) if refin else '-'} "
                   f"| {mr([r['fresh_replica_finalize_s'] for r in rs])} "
                   f"| {min(r['loadavg'] for r in rs):.1f}-{max(r['loadavg'] for r in rs):.1f} |")
    a, b = by[counts[0]], by[counts[-1]]
    key = ("finalize_s", "refinalize_s", "fresh_replica_finalize_s")
    out.append("")
    for k in key:
        pairs = [y[k] / x[k] for x, y in zip(a, b, strict=False) if x[k] > 0]
        out.append(f"{counts[-1]}x / {counts[0]}x {k}: ratio of medians "
                   f"{median([r[k] for r in b]) / median([r[k] for r in a]):.2f}; per rep "
                   f"{', '.join(f'{x:.2f}' for x in pairs)}")
    return "\n".join(out) + "\n"


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    counts = [int(x) for x in args.batches.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-batches-") as tmp:
        for rep in range(args.reps):
            for n in (counts if rep % 2 == 0 else counts[::-1]):  # interleaved: A B, B A, ...
                rows.append(await run(args, n, Path(tmp), rep))
                print(markdown(rows[-1:]).splitlines()[2], flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pods", type=int, default=100)
    ap.add_argument("--lines", type=int, default=50)
    ap.add_argument("--batches", default="1,10", help="batches per stream, comma-separated (the first is 1x)")
    ap.add_argument("--senders", type=int, default=16)
    ap.add_argument("--pause", type=float, default=2.0, help="seconds between compactions settling and finalize")
    ap.add_argument("--reps", type=int, default=1, help="runs of each batch count, interleaved (A B, B A, ...)")
    ap.add_argument("--refinalizes", type=int, default=1, help="re-finalizes timed after each first finalize")
    ap.add_argument("--direct", action="store_true", help="stage as settled ingest-side compaction leaves it "
                    "(bench_bigjob's --direct: no HTTP ingest, same staged objects)")
    args = ap.parse_args()
    started = time.time()
    rows = asyncio.run(main_async(args))
    print()
    print(markdown(rows), end="")
    if args.reps > 1:
        print()
        print(summary(rows), end="")
    write_results(RESULTS, "batches", vars(args), rows, started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
