"""Proof under fire at full size: the ten scenarios of issue 5 on the real topology, one results table.

Run: `.venv/bin/python bench/reliability.py [--size full|ci] [--scenario N ...] [--keep DIR]`

Starts Azurite (persisting to disk), two aggregator replicas and, per scenario, a job of three pods
(shipper sidecars, containers under logwrap running real makeblastdb/blastn and a heavy writer),
injects the scenario's fault, finalizes and compares every written line with the stored artifacts.
Prints the Markdown table (as in docs/reliability.md) and each scenario's timeline; exits 1 if any
check failed. Every process is stopped at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "e2e")]  # the test helpers and the rig

from rig.scenarios import CI, FULL, SCENARIOS, ScenarioResult, run_scenario, table  # noqa: E402
from rig.topology import Rig  # noqa: E402


def blast_version() -> str:
    try:
        out = subprocess.run(["blastn", "-version"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return "not installed"
    return out.splitlines()[0] if out else "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/reliability.py", description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("full", "ci"), default="full")
    parser.add_argument("--scenario", type=int, action="append", choices=sorted(SCENARIOS),
                        help="run only these (repeatable); default all")
    parser.add_argument("--keep", type=Path, help="work folder to keep (logs, volumes, Azurite data)")
    args = parser.parse_args(argv)
    size = FULL if args.size == "full" else CI
    numbers = args.scenario or sorted(SCENARIOS)
    work = args.keep or Path(tempfile.mkdtemp(prefix="blast-logs-rig-"))
    print(f"# {len(numbers)} scenario(s), size {size.name}: {size}", flush=True)
    print(f"# {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs; {blast_version()};"
          f" work folder {work}", flush=True)
    results: list[ScenarioResult] = []
    began = time.monotonic()
    try:
        with Rig(work) as rig:
            for n in numbers:
                r = run_scenario(rig, n, size)
                results.append(r)
                print(f"# {n}. {r.title}: {'pass' if r.ok else 'FAIL'} in {r.seconds:.1f}s -- {r.story()}",
                      flush=True)
                if not r.ok:
                    print(r.failures(), flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(table(results))
    print(f"total {time.monotonic() - began:.0f}s")
    return 0 if results and all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
