"""What a finalize does to other writers on the same filesystem, and what the filesystem does to it (issue 16).

    probe DIR OUT       every 20 ms a durable 9-byte write in DIR (temp file, fsync, rename, folder fsync:
                        what an ingest's staging write does), its ms, and whether a finalize child
                        (`aggregator.finalize.child`) used CPU in the last 0.25 s; saved to OUT (JSON) on
                        SIGINT/SIGTERM. Run it beside `bench_bigjob.py`.
    report OUT...       each file's write ms p50/p99 while a finalize child was busy and while none was.
    readers DIR         the mechanism alone: two CPU burners at nice 0, 3 x 20,000 reads of fresh files by
                        four threads at `--nice`, the probe beside; `--noatime` opens with O_NOATIME.
    creates DIR         file creation after deletions: N files of 21.5 KB (a chatty chunk) made as the local
                        store makes them (temp file, write, rename; no fsync), then N deleted, then N made
                        again at once, then again after `sync` and `--wait` seconds; each round's us per file
                        and system CPU. Says whether the filesystem has a journal.
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


def journal_of(folder: Path) -> str:
    """'yes'/'no' from /proc/fs/jbd2 (a journal is listed there by device), 'unknown' off Linux."""
    dev = os.stat(folder).st_dev
    name = f"{os.major(dev)}:{os.minor(dev)}"
    try:
        for line in Path(f"/sys/dev/block/{name}/uevent").read_text().splitlines():
            if line.startswith("DEVNAME="):
                devname = line.split("=", 1)[1]
                return "yes" if any(e.startswith(devname + "-") for e in os.listdir("/proc/fs/jbd2")) else "no"
    except OSError:
        pass
    return "unknown"


def make_files(folder: Path, n: int, data: bytes, tag: str) -> tuple[float, float]:
    """`n` new files in `folder` (temp name, write, rename): wall us per file and system CPU seconds."""
    t0, s0 = time.perf_counter(), os.times().system
    for i in range(n):
        path = folder / f"{tag}-{i:08d}.json"
        fd = os.open(f"{path}.tmp", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, data)
        os.close(fd)
        os.replace(f"{path}.tmp", path)
    return (time.perf_counter() - t0) / n * 1e6, os.times().system - s0


def creates(folder: Path, n: int, wait: float) -> None:
    """Three rounds in one new folder: N files made, deleted, N made at once, deleted, N made after `sync` and
    `wait` seconds. Ext4 without a journal skips, for each new inode, every free inode of the group deleted
    in the last 60 s (360 s while its inode-table block is dirty): `recently_deleted` in fs/ext4/ialloc.c."""
    data = b"x" * 21_500
    where = folder / f"creates-{os.getpid()}"
    where.mkdir(parents=True)
    print(f"{folder}: journal {journal_of(folder)}, kernel {os.uname().release}, load {os.getloadavg()[0]:.1f}")
    try:
        for n_round, (label, pause) in enumerate((("in a new folder", 0.0), ("right after deleting them", 0.0),
                                                  (f"after sync and {wait:.0f} s", wait))):
            if pause:
                os.sync()
                time.sleep(pause)
            us, sys_s = make_files(where, n, data, f"r{n_round}")
            print(f"  {n} files made {label}: {us:.0f} us per file, system CPU {sys_s:.2f} s", flush=True)
            for name in os.listdir(where):
                os.unlink(where / name)
    finally:
        subprocess.run(["rm", "-rf", str(where)], check=True)


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
    c = sub.add_parser("creates")
    c.add_argument("dir", type=Path)
    c.add_argument("-n", type=int, default=11_000)
    c.add_argument("--wait", type=float, default=70.0)
    args = ap.parse_args()
    if args.cmd == "probe":
        probe(args.dir, args.out)
    elif args.cmd == "report":
        report(args.files)
    elif args.cmd == "creates":
        creates(args.dir, args.n, args.wait)
    else:
        readers(args.dir, args.nice, args.noatime)


if __name__ == "__main__":
    main()
