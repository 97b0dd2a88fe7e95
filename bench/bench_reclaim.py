"""The volume under a flood: 2 GiB through `logwrap` into a 256 MiB tmpfs while the shipper ships
(issue 17; not a test: run it by hand, as root, since it mounts a tmpfs).

    .venv/bin/python bench/bench_reclaim.py [--total 2G] [--volume 256M] [--rate 32M] [--line 512]
                                            [--budget 1024G] [--drop-report 16M]

A writer (bench/paced_writer.py) under the installed `logwrap` prints `--total` bytes of `--line`-byte lines at `--rate`
bytes/s into a `--volume` tmpfs; `blast-log-shipper run` (defaults, except the per-stream budget:
unlimited unless `--budget` is given) ships them to bench/sink.py (its own process, counting).
The volume's use is sampled every 20 ms. Reported: whether every write went in, the peak use,
the lines the sink counted, the bytes the shipper punched (`reclaimed_bytes_total`), the times.
Results are written as JSON to bench/results/ (gitignored).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Final

BENCH: Final = Path(__file__).resolve().parent
ROOT: Final = BENCH.parent
sys.path.insert(0, str(BENCH))

from gen_logs import _size  # noqa: E402
from machine_info import machine as machine_info  # noqa: E402


def used(path: Path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return sum(float(row.split()[-1]) for row in resp.read().decode().splitlines()
                   if row.startswith(name + "{") or row.startswith(name + " "))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(args: argparse.Namespace) -> dict[str, Any]:
    total, limit, rate = _size(args.total), _size(args.volume), _size(args.rate)
    lines = total // args.line
    work = Path(tempfile.mkdtemp(prefix="blast-reclaim-"))
    volume = work / "volume"
    volume.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={limit}", "tmpfs", str(volume)], check=True)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        sink = subprocess.Popen([sys.executable, str(BENCH / "sink.py"), "--port", "0"],
                                stdout=subprocess.PIPE, start_new_session=True)
        procs.append(sink)
        assert sink.stdout is not None
        sink_url = sink.stdout.readline().decode().split()[-1]
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("BLAST_LOGS_")}
        env.update({"PYTHONPATH": str(ROOT), "BLAST_LOGS_DIR": str(volume),
                    "BLAST_LOGS_AGGREGATOR_URL": sink_url, "BLAST_LOGS_TOKEN": "elb-bench.x",
                    "BLAST_LOGS_JOB_ID": "elb-bench", "BLAST_LOGS_POD": "bench-pod",
                    "BLAST_LOGS_METRICS_PORT": str(port), "BLAST_LOGS_STREAM_BUDGET_BYTES": str(_size(args.budget)),
                    "BLAST_LOGS_DROP_REPORT_BYTES": str(_size(args.drop_report))})
        shipper = subprocess.Popen([sys.executable, "-m", "shipper", "run"], env=env,
                                   stdout=open(work / "shipper.log", "wb"), stderr=subprocess.STDOUT)
        procs.append(shipper)
        while not (volume / "bin" / "logwrap").exists():
            time.sleep(0.05)
        peak = [used(volume)]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.02):
                peak[0] = max(peak[0], used(volume))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        began = time.monotonic()
        done = subprocess.run([str(volume / "bin" / "logwrap"), "blast", "--", sys.executable,
                               str(BENCH / "paced_writer.py"), str(args.line), str(lines), str(rate)],
                              env={**os.environ, "BLAST_LOGS_DIR": str(volume)}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
        written = time.monotonic() - began
        size = (volume / "logs" / "blast.log").stat().st_size
        reclaimed = metric(port, "blast_logs_shipper_reclaimed_bytes_total")
        shipper.send_signal(signal.SIGTERM)
        status = shipper.wait(timeout=600)
        shipped = time.monotonic() - began
        stop.set()
        sampler.join()
        stats = get_json(sink_url + "/stats")
        return {
            "machine": machine_info(), "total_bytes": total, "volume_bytes": limit, "rate": rate,
            "line_bytes": args.line, "lines": lines, "budget": args.budget, "drop_report": args.drop_report,
            "writer_status": done.returncode, "writer_stderr": done.stderr.decode(errors="replace")[-500:],
            "log_size": size, "every_write_in": size == lines * args.line and done.returncode == 0,
            "peak_use_bytes": peak[0], "events_at_sink": stats.get("events"),
            "reclaimed_bytes": reclaimed, "shipper_status": status,
            "write_seconds": round(written, 1), "until_drained_seconds": round(shipped, 1),
        }
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        subprocess.run(["umount", "-l", str(volume)], check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--total", default="2G")
    parser.add_argument("--volume", default="256M")
    parser.add_argument("--rate", default="32M")
    parser.add_argument("--line", type=int, default=512)
    parser.add_argument("--budget", default="1024G")
    parser.add_argument("--drop-report", default="16M")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_reclaim: mounting the tmpfs needs root")
    result = run(args)
    out = BENCH / "results" / f"reclaim-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
