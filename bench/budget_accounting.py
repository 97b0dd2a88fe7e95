"""Line-by-line accounting of the shipper past its stream budget, drained by SIGTERM at chosen moments.

    .venv/bin/python bench/budget_accounting.py [--at first-batch,budget,report,eof,idle,writing,random]
        [--runs 3] [--lines 200000] [--budget 2M] [--ring 64K] [--report 4M] [--workers 0|1]
    .venv/bin/python bench/budget_accounting.py --input /tmp/blast-bench/log-1000000-1073741824.log \\
        --budget 64M --ring 1M --report 16M --at idle --runs 2      # the bench's 1 GB default-budget case

The real shipper process (`python -m shipper run`, this tree) ships one file to a recording sink in
this process (aiohttp), which keeps every event (`off`, its encoded length, its `ts`, its line) and
every `dropped` report. Then, against the file as written, it checks the standard "nothing lost,
nothing duplicated": every line is either shipped exactly once or inside exactly one report, no
report covers a shipped line, report `lines`/`bytes` match the lines they cover, shipped bytes +
reported bytes = the file's bytes, one `eof` batch, the tail is the file's last lines (and, for the
generated numbered lines, each shipped line's text is the file's). It also prints what the tail
ring held (events, encoded bytes against its cap, each read's `ts` width and events) and how many
events the same tail would have held had every read's `ts` been 15, 16, 17 or 18 characters wide:
the events-at-sink count of a default-budget run depends on those widths (docs/benchmarks.md,
round six, "Memory").

`--fail-every N` has the sink refuse every N-th request with a 503 (stored nothing), so batches,
reports and the eof are retried past the budget and during the drain.

Moments (`--at`): `first-batch` (the first batch with events arrived: reading below the budget),
`budget` (the batch that reaches the budget arrived), `report` (the first report of
`--drop-report-bytes` arrived: reading past the budget), `eof` (the shipper's `bytes_read` equals
the file: just read to its end), `idle` (1 s after that), `writing` (the file is written while
the shipper runs, in 20 pieces; SIGTERM right after the last), `random` (a random delay within the
time a run takes). Exit status 1 if any run broke the accounting.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import itertools
import os
import random
import re
import shutil
import signal
import socket
import sys
import time
import urllib.request
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import orjson
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from gen_logs import _size  # noqa: E402
from sink import ingest_on_loopback  # noqa: E402


@dataclass
class Event:
    seq: int
    off: int
    size: int  # encoded bytes, as the ring counts them
    ts: float
    ts_width: int
    line: str


@dataclass
class Recording:
    events: list[Event] = field(default_factory=list)
    #: (off, lines, bytes, exact) of each report, in arrival order
    reports: list[tuple[int, int, int, bool]] = field(default_factory=list)
    #: (seq, events, first off, last off, dropped, eof) of each batch, in arrival order
    summary: list[tuple[int, int, int, int, Any, bool]] = field(default_factory=list)
    eof_batches: int = 0
    batches: int = 0
    with_events: int = 0
    #: answer 503 (nothing stored) to every n-th request; 0: never
    fail_every: int = 0
    requests: int = 0
    refused: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        self.requests += 1
        if self.fail_every and self.requests % self.fail_every == 0:
            self.refused += 1
            return web.json_response({"error": "unavailable", "detail": "told to fail"}, status=503)
        self.batches += 1
        offs = [ev["off"] for ev in body["events"]] or [-1]
        self.summary.append((body["seq"], len(body["events"]), offs[0], offs[-1], body.get("dropped"), body["eof"]))
        for ev in body["events"]:
            self.events.append(Event(body["seq"], ev["off"], len(orjson.dumps(ev)), ev["ts"], len(orjson.dumps(ev["ts"])),
                                     ev["line"]))
        if body["events"]:
            self.with_events += 1
        d = body.get("dropped") or {}
        if d.get("lines"):
            self.reports.append((d["off"], d["lines"], d["bytes"], d.get("exact", True)))
        self.eof_batches += bool(body["eof"])
        return web.json_response({"accepted": len(body["events"]), "duplicate": False})


def numbered(lines: int, seed: int) -> bytes:
    """Lines `NNNNNNNNN <filler>` of 20-199 bytes (varied, so the ring's byte bound cuts anywhere)."""
    rnd = random.Random(seed)
    return b"".join(b"%09d %s\n" % (i, b"x" * rnd.randrange(10, 190)) for i in range(lines))


def straddle(data: bytes, past: int, read_size: int = 256 * 1024) -> bytes:
    """`data` cut so that it ends `past` bytes after a multiple of `read_size`, its last line
    crossing that multiple (as the benchmarks' 1 GB file's does: a last read of 76 bytes)."""
    boundary = (len(data) - past) // read_size * read_size
    start = data.rindex(b"\n", 0, boundary - 10) + 1  # the last line begins before the boundary
    end = boundary + past
    return data[:start] + b"%09d " % 999999999 + b"y" * (end - start - 11) + b"\n"


def line_starts(data: bytes) -> array[int]:
    starts = array("q", [0])
    starts.extend(m.end() for m in re.finditer(b"\n", data))
    if starts[-1] == len(data):
        starts.pop()  # the file ends with a newline: no line starts there
    return starts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bytes_read(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return -1
    m = re.search(r'^blast_logs_shipper_bytes_read_total\{container="blast"\} (\S+)$', text, re.M)
    return int(float(m.group(1))) if m else 0


def check(data: bytes, rec: Recording, budget: int, ring_cap: int, text: bool) -> dict[str, Any]:
    """The accounting of one run against the file's bytes; `problems` lists what broke it."""
    starts = line_starts(data)
    n, size = len(starts), len(data)
    problems: list[str] = []
    shipped = bytearray(n)  # times each line was shipped
    reported = bytearray(n)  # times each line is inside a report
    for ev in rec.events:
        i = bisect.bisect_left(starts, ev.off)
        if i == n or starts[i] != ev.off:
            problems.append(f"event at {ev.off} is not at a line start")
            continue
        shipped[i] = min(shipped[i] + 1, 255)
        if text:
            end = starts[i + 1] if i + 1 < n else size
            want = data[ev.off:end].rstrip(b"\n").decode()
            if ev.line != want:
                problems.append(f"line {i} at {ev.off}: {ev.line[:30]!r} != {want[:30]!r}")
    report_bytes = 0
    for off, lines, nbytes, exact in rec.reports:
        i = bisect.bisect_left(starts, off)
        j = bisect.bisect_left(starts, off + nbytes)
        if not exact:
            problems.append(f"report at {off} is not exact")
        if i == n or starts[i] != off or (j < n and starts[j] != off + nbytes) or off + nbytes > size:
            problems.append(f"report {off}+{nbytes} does not cover whole lines")
            continue
        if j - i != lines:
            problems.append(f"report at {off}: {lines} lines, but its bytes hold {j - i}")
        report_bytes += nbytes
        for k in range(i, j):
            reported[k] = min(reported[k] + 1, 255)
    twice = [i for i in range(n) if shipped[i] > 1]
    both = [i for i in range(n) if shipped[i] and reported[i]]
    multi = [i for i in range(n) if reported[i] > 1]
    neither = [i for i in range(n) if not shipped[i] and not reported[i]]
    for what, idx in (("shipped twice", twice), ("shipped and reported", both), ("in two reports", multi),
                      ("neither shipped nor reported", neither)):
        if idx:
            problems.append(f"{len(idx)} lines {what} (first: line {idx[0]} at {starts[idx[0]]})")
    shipped_bytes = sum((starts[i + 1] if i + 1 < n else size) - starts[i] for i in range(n) if shipped[i])
    if not problems and shipped_bytes + report_bytes != size:
        problems.append(f"shipped {shipped_bytes} + reported {report_bytes} bytes != file {size}")
    if rec.eof_batches != 1:
        problems.append(f"{rec.eof_batches} eof batches")
    # the tail: shipped lines after the last reported one (or past the budget) are the file's last lines
    last_reported = max((i for i in range(n) if reported[i]), default=-1)
    tail = [ev for ev in rec.events if ev.off > (starts[last_reported] if last_reported >= 0 else budget - 1)]
    tail.sort(key=lambda e: e.off)
    if tail and [bisect.bisect_left(starts, e.off) for e in tail] != list(range(n - len(tail), n)):
        problems.append("the tail is not the file's last lines")
    held = sum(e.size for e in tail)
    out: dict[str, Any] = {
        "lines": n, "bytes": size, "events": len(rec.events), "batches": rec.batches,
        "reports": len(rec.reports), "reported_lines": sum(r[1] for r in rec.reports),
        "reported_bytes": report_bytes, "shipped_bytes": shipped_bytes, "problems": problems,
    }
    if last_reported >= 0 and tail:
        reads: list[list[int]] = []  # [ts width, events] of each read in the tail, in order
        for e in tail:
            if not reads or reads[-1][2] != e.ts:
                reads.append([e.ts_width, 0, e.ts])
            reads[-1][1] += 1
        out.update({"tail_events": len(tail), "tail_bytes": held, "ring_cap": ring_cap,
                    "tail_reads": [(w, k) for w, k, _ in reads]})
        # The ring keeps the longest suffix within its cap, counting encoded events, whose `ts` is
        # as wide as its shortest round-tripping repr (16-18 characters for today's times). What it
        # would have kept had every read's ts been `width` wide:
        cands = before_tail(starts, data, tail, 4 * len(tail)) + tail
        for width in (15, 16, 17, 18):
            total, k = 0, 0
            for e in reversed(cands):
                total += e.size - e.ts_width + width
                if total > ring_cap:
                    break
                k += 1
            out[f"tail_if_ts_{width}"] = k
    return out


def before_tail(starts: array[int], data: bytes, tail: list[Event], count: int) -> list[Event]:
    """The `count` lines before the tail as events with the tail's first `ts` (they were reported,
    not shipped): what a narrower `ts` would have let the ring keep. Their text as read (a line the
    sanitiser changes encodes differently: an estimate for such lines)."""
    first = bisect.bisect_left(starts, tail[0].off)
    ts = tail[0].ts
    out = []
    for i in range(max(0, first - count), first):
        line = data[starts[i]:starts[i + 1]].rstrip(b"\n").decode(errors="replace")
        ev = {"off": starts[i], "ts": ts, "line": line}
        out.append(Event(-1, starts[i], len(orjson.dumps(ev)), ts, len(orjson.dumps(ts)), line))
    return out


async def one_run(args: argparse.Namespace, data: bytes, src: Path | None, at: str, run: int,
                  workdir: Path) -> dict[str, Any]:
    rec = Recording(fail_every=args.fail_every)
    runner, url = await ingest_on_loopback(rec.handle, 16 * 1024 * 1024)
    vol = workdir / "vol"
    shutil.rmtree(vol, ignore_errors=True)
    (vol / "logs").mkdir(parents=True)
    path = vol / "logs" / "blast.log"
    writing = at == "writing"
    if src is not None:
        shutil.copyfile(src, path)  # a copy: the shipper punches holes over what it delivered
    else:
        path.write_bytes(b"" if writing else data)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLAST_LOGS_")}
    env.update({
        "PYTHONPATH": str(ROOT), "BLAST_LOGS_DIR": str(vol), "BLAST_LOGS_AGGREGATOR_URL": url,
        "BLAST_LOGS_TOKEN": "bench.not-checked", "BLAST_LOGS_JOB_ID": "bench", "BLAST_LOGS_POD": "bench-pod",
        "BLAST_LOGS_PHASE": "running", "BLAST_LOGS_METRICS_PORT": str(port),
        "BLAST_LOGS_STREAM_BUDGET_BYTES": str(args.budget), "BLAST_LOGS_TAIL_RING_BYTES": str(args.ring),
        "BLAST_LOGS_DROP_REPORT_BYTES": str(args.report), "BLAST_LOGS_SANITISE_WORKERS": str(args.workers),
        "BLAST_LOGS_BACKOFF_BASE": "0.02", "BLAST_LOGS_BACKOFF_MAX": "0.2",
    })
    log_path = workdir / f"shipper-{at}-{run}.log"
    began = time.monotonic()
    with _open_log(log_path) as out:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "shipper", "run", env=env,
                                                    stdout=out, stderr=asyncio.subprocess.STDOUT)
    size = len(data)
    whole = size if data.endswith(b"\n") else data.rfind(b"\n") + 1  # an unterminated line waits for the drain

    async def until(cond: Any, limit: float = 600) -> None:
        deadline = time.monotonic() + limit
        while not cond():
            if proc.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{at}: shipper exited or timed out (see {log_path})")
            await asyncio.sleep(0.005)

    try:
        if at == "first-batch":
            await until(lambda: rec.with_events > 0)
        elif at == "budget":
            await until(lambda: any(e.off + len(e.line) >= args.budget - 1 for e in rec.events[-1000:]))
        elif at == "report":
            await until(lambda: bool(rec.reports))
        elif at in ("eof", "idle"):
            await until(lambda: bytes_read(port) >= whole)
            if at == "idle":
                await asyncio.sleep(1.0)
        elif at == "writing":
            pieces = 20
            cut = [0] + [data.index(b"\n", size * k // pieces) + 1 for k in range(1, pieces)] + [size]
            for a, b in itertools.pairwise(cut):
                _append(path, data[a:b])
                await asyncio.sleep(0.05)
        elif at == "random":
            await asyncio.sleep(random.uniform(0, args.random_max))
        signalled = time.monotonic() - began
        read_then = bytes_read(port)
        proc.send_signal(signal.SIGTERM)
        status = await asyncio.wait_for(proc.wait(), 600)
    finally:
        if proc.returncode is None:  # the moment never came: no shipper left behind
            proc.kill()
            await proc.wait()
            await runner.cleanup()
    await runner.cleanup()
    result = check(data, rec, args.budget, args.ring, text=src is None)
    result.update({"at": at, "run": run, "exit": status, "sigterm_s": round(signalled, 3), "refused": rec.refused,
                   "bytes_read_at_sigterm": read_then})
    if status != 0:
        result["problems"].append(f"exit status {status} (see {log_path})")
    if result["problems"]:  # keep what happened, for a look
        last = max(e.off for e in rec.events)
        dump = {"result": result, "batches": rec.summary,
                "late_events": [vars(e) for e in rec.events if e.off >= last - 2000]}
        (workdir / f"problem-{at}-{run}.json").write_bytes(orjson.dumps(dump, option=orjson.OPT_INDENT_2))
        result["problems"].append(f"kept {workdir}/problem-{at}-{run}.json and {log_path}")
    return result


def _open_log(path: Path) -> BinaryIO:
    return open(path, "wb")


def _append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


async def main_async(args: argparse.Namespace, workdir: Path, src: Path | None, data: bytes) -> int:
    bad = 0
    for run in range(args.runs):
        for at in args.at.split(","):
            r = await one_run(args, data, src, at, run, workdir)
            bad += bool(r["problems"])
            keys = ("at", "run", "refused", "sigterm_s", "bytes_read_at_sigterm", "events", "reports", "reported_lines",
                    "tail_events", "tail_bytes", "tail_reads", "tail_if_ts_15", "tail_if_ts_16", "tail_if_ts_17",
                    "tail_if_ts_18")
            print(" ".join(f"{k}={r[k]}" for k in keys if k in r),
                  "OK" if not r["problems"] else f"PROBLEMS {r['problems'][:5]}", flush=True)
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--at", default="first-batch,budget,report,eof,idle,writing,random")
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--lines", type=int, default=200_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--input", help="ship this file instead of generated numbered lines (text not compared)")
    p.add_argument("--budget", type=_size, default=_size("2M"))
    p.add_argument("--ring", type=_size, default=_size("64K"))
    p.add_argument("--report", type=_size, default=_size("4M"))
    p.add_argument("--straddle", type=int, default=0, metavar="BYTES",
                   help="end the file BYTES past a multiple of the read size, its last line crossing it")
    p.add_argument("--unterminated", action="store_true", help="the file's last line has no newline")
    p.add_argument("--workers", type=int, default=0, help="sanitising workers (the shipper's default: 0)")
    p.add_argument("--fail-every", type=int, default=0, metavar="N",
                   help="the sink answers 503 to every N-th request (the shipper retries)")
    p.add_argument("--random-max", type=float, default=2.0)
    p.add_argument("--workdir", default="/tmp/budget-accounting")
    args = p.parse_args(argv)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    src = Path(args.input) if args.input else None
    data = src.read_bytes() if src else numbered(args.lines, args.seed)
    if args.straddle:
        data = straddle(data, args.straddle)
    if args.unterminated:
        data = data.rstrip(b"\n")  # the last line without its newline: shipped at the drain
    return asyncio.run(main_async(args, workdir, src, data))


if __name__ == "__main__":
    sys.exit(main())
