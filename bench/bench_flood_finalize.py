"""A staged job finalized in this process (issue 16, flood): wall and CPU seconds, each pass's seconds and
peak RSS, and digests of the artifacts, so two trees' finalizes can be compared byte for byte.

    .venv/bin/python bench/bench_flood_finalize.py STAGED        # a folder holding one job's staging
    .venv/bin/python bench/bench_flood_finalize.py --add-count SRC DST

STAGED is what `bench_bigjob.py --direct flood --staged STAGED` keeps (one job folder); each run
finalizes a hard-linked copy of it (with this tree's code: run it from the tree to measure) and removes
the copy. `--add-count` makes DST a copy of SRC whose big compacted objects' heads carry their event
`count`, as this tree writes them (objects compacted before that was kept lack it).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

ROOT: Final = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aggregator.config import AggregatorConfig  # noqa: E402
from aggregator.finalize import job as finalize_module  # noqa: E402
from aggregator.storage.local import LocalStore  # noqa: E402

EVENTS_LINES: Final = b'"events":[\n'


def add_count(src: Path, dst: Path) -> int:
    """DST: SRC hard-linked, each one-event-per-line compacted object without a count rewritten with it."""
    subprocess.run(["cp", "-al", str(src), str(dst)], check=True)
    done = 0
    for folder, _dirs, files in os.walk(dst):
        for name in files:
            if not name.startswith("c-"):
                continue
            path = Path(folder) / name
            data = path.read_bytes()
            split = data.find(EVENTS_LINES)
            if split < 0 or b'"count":' in data[:split]:
                continue
            count = data.count(b"\n", split + len(EVENTS_LINES))
            tmp = path.with_name(name + ".tmp")
            tmp.write_bytes(b"".join((data[:split], b'"count":%d,' % count, data[split:])))
            os.replace(tmp, path)  # a new file: the hard-linked original stays as it was
            done += 1
    return done


class Peaks:
    """Peak VmRSS (MiB) per named part of the run, sampled every 5 ms."""

    def __init__(self) -> None:
        self.part = "start"
        self.peaks: dict[str, int] = {}
        self.seconds: dict[str, float] = {}
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while True:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        mib = int(line.split()[1]) // 1024
                        self.peaks[self.part] = max(self.peaks.get(self.part, 0), mib)
            time.sleep(0.005)

    def timed(self, name: str, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def run(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            self.part = name
            try:
                return await fn(*args, **kwargs)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
                self.part = f"after {name}"
        return run


def digest(root: Path, job_id: str) -> str:
    h = hashlib.sha256()
    for folder, _dirs, files in sorted(os.walk(root / job_id / "execution-steps")):
        if "_staging" in Path(folder).parts:
            continue
        for name in sorted(files):
            if not name.startswith(".tmp"):
                h.update(name.encode())
                h.update((Path(folder) / name).read_bytes())
    return h.hexdigest()[:12]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("staged", type=Path, nargs="?")
    ap.add_argument("--add-count", nargs=2, type=Path, metavar=("SRC", "DST"))
    args = ap.parse_args()
    if args.add_count:
        print(f"{add_count(*args.add_count)} objects given their count")
        return 0
    jobs = [p.name for p in args.staged.iterdir() if p.is_dir()]
    if len(jobs) != 1:
        raise SystemExit(f"{args.staged} holds {len(jobs)} jobs, not one")
    job_id = jobs[0]
    copy = args.staged.parent / f"{args.staged.name}-run-{uuid.uuid4().hex[:6]}"
    subprocess.run(["cp", "-al", str(args.staged), str(copy)], check=True)
    try:
        peaks = Peaks()
        for name in ("scan_streams", "write_phase"):
            setattr(finalize_module, name, peaks.timed(name, getattr(finalize_module, name)))
        cfg = AggregatorConfig.from_env({"BLAST_LOGS_SECRET": "bench", "BLAST_LOGS_ADMIN_TOKEN": "bench"})
        t0, c0 = time.perf_counter(), time.process_time()
        summary = asyncio.run(finalize_module.finalize_job(LocalStore(copy), cfg, job_id, wait_seconds=0,
                                                           existing_last_output={}))
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{job_id}: finalize {wall:.2f} s wall, {cpu:.2f} s CPU; passes (s) "
              f"{ {k: round(v, 2) for k, v in peaks.seconds.items()} }; peak RSS {peak:.0f} MiB, by part "
              f"{peaks.peaks}; summary {hashlib.sha256(summary).hexdigest()[:12]}, chunks {digest(copy, job_id)}; "
              f"load {os.getloadavg()[0]:.1f}; code {finalize_module.__file__}")
    finally:
        shutil.rmtree(copy)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
