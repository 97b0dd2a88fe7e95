"""`prepare()` alone over the bench file, in process, for several source trees in alternation.

    .venv/bin/python bench/bench_prepare.py --tree now=. --tree before=/tmp/base [--rounds 5]

Each round runs one child per tree (`PYTHONPATH=<tree>`, so each imports its own `shipper`, and
its own compiled `_hotpath` if built there); a child reads the file as the shipper does (256 KiB
reads), prepares every read from the clean state (its best CPU time of three passes, so start-up
and reading are left out) and counts the lines the compiled path handed to Python; where the tree
has both, it also times the redaction pre-check's needle scan alone (`scan_s`: the one `_hits`
uses; `scan_py_s`: the automaton over a lowered copy, the pure path's). Not a test:
run it by hand (docs/benchmarks.md, "The shipper's CPU per line, round three").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
DEFAULT_FILE = Path("/tmp/blast-bench/log-1000000.log")  # bench_shipper.py's generated input


def read_chunks(path: Path) -> list[Any]:
    """The file's reads with lines, as the shipper reads it (256 KiB reads), in the child's tree."""
    from shipper.reader import LineReader

    reader = LineReader(path, 256 * 1024, 1 << 20)
    reader.open()
    chunks = []
    while (chunk := reader.read()) is not None:
        if chunk.count:
            chunks.append(chunk)
    return chunks


def alternate(script: str, args: argparse.Namespace, note: Callable[[], str] = lambda: "") -> dict[str, list[dict[str, object]]]:
    """Run `script --child` once per tree (`--tree NAME=PATH`, each child importing that tree) per
    round, in alternating order; each child's JSON answer, by tree."""
    trees = dict(t.split("=", 1) for t in args.tree) or {"now": str(BENCH.parent)}
    results: dict[str, list[dict[str, object]]] = {name: [] for name in trees}
    for r in range(args.rounds):
        for name, tree in (trees.items() if r % 2 == 0 else reversed(trees.items())):
            env = {**os.environ, "PYTHONPATH": str(Path(tree).resolve())}
            out = subprocess.run([sys.executable, script, "--child", "--file", str(args.file)], env=env,
                                 check=True, capture_output=True, text=True).stdout
            results[name].append(json.loads(out))
            print(f"round {r + 1} {name}: {results[name][-1]}{note()}", flush=True)
    return results


def child(path: Path) -> dict[str, object]:
    from shipper import prepare as prep
    from shipper.redact import CLEAN_STATE
    from shipper.sanitise import Sanitiser

    chunks = read_chunks(path)
    san = Sanitiser()
    best = float("inf")
    for _ in range(3):
        start = time.process_time()
        for chunk in chunks:
            prep.prepare(san, chunk, CLEAN_STATE)
        best = min(best, time.process_time() - start)
    slow = 0
    if prep.COMPILED:
        for chunk in chunks:
            own, rules = san.needle_hits(chunk.joined)
            flagged = sorted(own + rules)
            if hasattr(prep._hotpath, "encode_chunk"):  # round nine on
                slow += len(prep._hotpath.encode_chunk(bytearray(), chunk.joined, chunk.first, b"1.5", san.max_chars,
                                                       flagged)[3])
            else:
                slow += len(prep._hotpath.encode_lines(chunk.joined, chunk.first, b"1.5", san.max_chars, flagged)[2])
    out: dict[str, object] = {"lines": sum(c.count for c in chunks), "prepare_s": round(best, 3),
                              "compiled": prep.COMPILED, "python_lines": slow}
    from shipper import redact
    if hasattr(redact, "_find_py"):  # the redaction pre-check's needle scan alone, both ways
        for name, find in (("scan_s", redact._find), ("scan_py_s", redact._find_py)):
            out[name] = round(min(_cpu(lambda f=find: [f(c.joined) for c in chunks]) for _ in range(3)), 3)
    return out


def _cpu(work: Callable[[], object]) -> float:
    start = time.process_time()
    work()
    return time.process_time() - start


def parse_args(description: str, rounds: int) -> argparse.Namespace:
    """`--tree NAME=PATH` (repeated), `--rounds`, `--file`, and the child's `--child`."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--tree", action="append", default=[], help="NAME=PATH of a source tree")
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--file", type=Path, default=DEFAULT_FILE)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> int:
    args = parse_args(__doc__.splitlines()[0], 5)
    if args.child:
        print(json.dumps(child(args.file)))
        return 0
    results = alternate(__file__, args)
    print(f"load average at the end: {os.getloadavg()}")
    for name, runs in results.items():
        times = [float(str(x["prepare_s"])) for x in runs]
        print(f"{name}: prepare() {statistics.median(times):.3f} s median ({min(times):.3f}-{max(times):.3f}), "
              f"lines handed to Python {runs[0]['python_lines']:,} of {runs[0]['lines']:,}")
        for key in ("scan_s", "scan_py_s"):
            if key in runs[0]:
                scans = [float(str(x[key])) for x in runs]
                print(f"{name}: {key} {statistics.median(scans):.3f} s median ({min(scans):.3f}-{max(scans):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
