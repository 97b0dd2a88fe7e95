"""What a finalize does to other writers' fsyncs on the same filesystem (issue 16, fifth round).

    probe DIR OUT       every 20 ms a durable 9-byte write in DIR (temp file, fsync, rename, folder fsync:
                        what an ingest's staging write does), its ms, and whether a finalize child
                        (`aggregator.finalize.child`) used CPU in the last 0.25 s; saved to OUT (JSON) on
                        SIGINT/SIGTERM. Run it beside `bench_bigjob.py`.
    report OUT...       each file's write ms p50/p99 while a finalize child was busy and while none was.
    readers DIR         the mechanism alone: two CPU burners at nice 0, 3 x 20,000 reads of fresh files by
                        four threads at `--nice`, the probe beside; `--noatime` opens with O_NOATIME.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from blastlogs.atomic import write_atomic

CHILD = b"aggregator.finalize.child"


def child_ticks() -> int:
    total = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if CHILD in Path(f"/proc/{pid}/cmdline").read_bytes():
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total


def probe(folder: Path, out: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    stop: list[bool] = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    signal.signal(signal.SIGINT, lambda *_: stop.append(True))
    rows: list[tuple[float, float, bool]] = []
    last, busy, sampled, i = child_ticks(), False, time.monotonic(), 0
    while not stop:
        t0 = time.perf_counter()
        write_atomic(str(folder / f"p{i % 50}.json"), b'{"x": %d}' % (i % 10))
        rows.append((time.time(), (time.perf_counter() - t0) * 1000, busy))
        if time.monotonic() - sampled > 0.25:
            now = child_ticks()
            busy, last, sampled = now > last + 2, now, time.monotonic()
        i += 1
        time.sleep(0.02)
    out.write_text(json.dumps(rows))


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[int(q * (len(values) - 1))] if values else 0.0


def report(paths: list[Path]) -> None:
    for path in paths:
        rows = json.loads(path.read_text())
        for name, flag in (("finalize busy", True), ("no finalize", False)):
            ms = [r[1] for r in rows if r[2] == flag]
            print(f"{path.name}: {name}: n {len(ms)}, write p50 {pct(ms, 0.5):.1f} ms, p99 {pct(ms, 0.99):.1f} ms")


def readers(folder: Path, nice: int, noatime: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    names = [folder / f"f{i}" for i in range(20_000)]
    for name in names:
        name.write_bytes(b"x" * 900)
    os.sync()
    out = folder / "probe.json"
    burn = "import time\nend = time.time() + 60\nwhile time.time() < end: pass"
    burners = [subprocess.Popen([sys.executable, "-c", burn]) for _ in range(2)]
    prober = subprocess.Popen([sys.executable, __file__, "probe", str(folder / "probe"), str(out)])
    flags = os.O_RDONLY | (os.O_NOATIME if noatime else 0)

    def read(name: Path) -> int:
        fd = os.open(name, flags)
        try:
            return len(os.read(fd, 65536))
        finally:
            os.close(fd)

    def work() -> None:
        os.nice(nice)  # this thread's; the pool's threads start from it
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(read, names * 3))

    time.sleep(1)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(1) as one:
        one.submit(work).result()
    took = time.perf_counter() - t0
    prober.send_signal(signal.SIGTERM)
    prober.wait()
    for b in burners:
        b.kill()
        b.wait()
    ms = [r[1] for r in json.loads(out.read_text())]
    print(f"readers at nice {nice}{' with O_NOATIME' if noatime else ''}: {took:.2f} s; beside them a nice-0 "
          f"durable write p50 {pct(ms, 0.5):.1f} ms, p99 {pct(ms, 0.99):.1f} ms (n {len(ms)})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("probe")
    p.add_argument("dir", type=Path)
    p.add_argument("out", type=Path)
    r = sub.add_parser("report")
    r.add_argument("files", type=Path, nargs="+")
    d = sub.add_parser("readers")
    d.add_argument("dir", type=Path)
    d.add_argument("--nice", type=int, default=10)
    d.add_argument("--noatime", action="store_true")
    args = ap.parse_args()
    if args.cmd == "probe":
        probe(args.dir, args.out)
    elif args.cmd == "report":
        report(args.files)
    else:
        readers(args.dir, args.nice, args.noatime)


if __name__ == "__main__":
    main()
