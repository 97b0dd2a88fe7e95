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
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Final

import aiohttp

BENCH: Final = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from bench_bigjob import (  # noqa: E402
    CONTAINERS,
    HTTP_TIMEOUT,
    RESULTS,
    finalize,
    ingest,
    interleave,
    settled,
    staging_count,
    stream_batches,
)
from machine_info import write_results  # noqa: E402

from tests.conftest import AggregatorProc, aggregator_env, free_port  # noqa: E402

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


async def run(args: argparse.Namespace, nbatches: int, workdir: Path) -> dict[str, Any]:
    job_id = f"elb-batches-{nbatches}-{uuid.uuid4().hex[:6]}"
    per = -(-args.lines // nbatches)
    streams = [(f"pod-{p}", c) for p in range(args.pods) for c in CONTAINERS]
    bodies = list(interleave([(pod, ctr, stream_batches(job_id, pod, ctr, i, args.lines, per, 0.5))
                              for i, (pod, ctr) in enumerate(streams)]))
    phases = {"running": args.pods * 2 * args.lines, "exporting_results": args.pods * args.lines}
    root = workdir / f"store-{nbatches}"
    procs = [AggregatorProc(port=free_port(), env=aggregator_env(f"file://{root}", {"BLAST_LOGS_LOG_LEVEL": "WARNING"}),
                            log_path=workdir / f"batches-{nbatches}-{i}.log") for i in range(2)]
    for p in procs:
        p.start()
    try:
        async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as session:
            urls = [p.url for p in procs]
            ingest_s = await ingest(session, urls, job_id, bodies, args.senders)
            at_ingest_end = staging_count(root / job_id)
            settle_s = await settled(root / job_id, len(streams))
            at_finalize = staging_count(root / job_id)
            await asyncio.sleep(args.pause)
            before = await finalize_ops(session, urls)
            fin_s, _ = await finalize(session, urls[0], job_id, phases)
            after = await finalize_ops(session, urls)
            refin_s, _ = await finalize(session, urls[0], job_id, phases)
            fresh = AggregatorProc(port=free_port(), env=aggregator_env(f"file://{root}",
                                                                        {"BLAST_LOGS_LOG_LEVEL": "WARNING"}),
                                   log_path=workdir / f"batches-{nbatches}-fresh.log")
            procs.append(fresh)
            fresh.start()
            fresh_s, _ = await finalize(session, fresh.url, job_id, phases)
    finally:
        for p in procs:
            p.stop()
    ops = {k: int(after.get(k, 0) - before.get(k, 0)) for k in sorted(after)}
    return {"batches_per_stream": nbatches, "streams": len(streams), "lines": phases["running"],
            "ingest_requests": len(bodies), "ingest_s": round(ingest_s, 2), "staging_at_ingest_end": at_ingest_end,
            "settle_s": round(settle_s, 2), "staging_at_finalize": at_finalize, "finalize_s": round(fin_s, 3), "refinalize_s": round(refin_s, 3),
            "fresh_replica_finalize_s": round(fresh_s, 3),
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
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        out.append("")
        out.append(f"{b['batches_per_stream']}x / {a['batches_per_stream']}x batches: operations "
                   f"{b['finalize_ops_total'] / max(a['finalize_ops_total'], 1):.2f}x, finalize time "
                   f"{b['finalize_s'] / max(a['finalize_s'], 1e-9):.2f}x")
    return "\n".join(out) + "\n"


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-batches-") as tmp:
        for n in (int(x) for x in args.batches.split(",")):
            rows.append(await run(args, n, Path(tmp)))
            print(markdown(rows[-1:]).splitlines()[2], flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pods", type=int, default=100)
    ap.add_argument("--lines", type=int, default=50)
    ap.add_argument("--batches", default="1,10", help="batches per stream, comma-separated (the first is 1x)")
    ap.add_argument("--senders", type=int, default=16)
    ap.add_argument("--pause", type=float, default=2.0, help="seconds between compactions settling and finalize")
    args = ap.parse_args()
    started = time.time()
    rows = asyncio.run(main_async(args))
    print()
    print(markdown(rows), end="")
    write_results(RESULTS, "batches", vars(args), rows, started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
