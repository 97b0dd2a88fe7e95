"""Peak RSS of `blast-log-shipper run` shipping a generated log to a counting sink.

    .venv/bin/python bench/bench_shipper_memory.py            # 10 MB and 1 GB
    .venv/bin/python bench/bench_shipper_memory.py --sizes 10M

The sink (an aiohttp server in this process) answers 200 and counts events; when it has counted
every line, the shipper gets SIGTERM and drains. The peak RSS is the child's own (`os.wait4`).
The stream budget is lifted so every line is really shipped (the default would keep only a
tail past 64 MiB, which needs less memory, not more).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from sink import ingest_on_loopback  # noqa: E402

LINE_TEMPLATES = (
    "Query= batch_{i} length=1532 Score = {s} bits (1024), Expect = 1e-{e}",
    "Warning: [blastn] Query_{i} contains a low-complexity region; masked {s} letters",
    "Identities = {s}/1500 (98%), Gaps = 2/1500 (0%) Strand=Plus/Minus subject_{e}",
)


def parse_size(text: str) -> int:
    units = {"K": 1024, "M": 1024**2, "G": 1024**3}
    return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].upper() in units else int(text)


def generate(path: Path, size: int) -> int:
    """Write about `size` bytes of BLAST-like lines; returns the line count."""
    block_lines = [LINE_TEMPLATES[i % 3].format(i=i, s=i * 7 % 1000, e=i % 180) for i in range(10_000)]
    block = ("\n".join(block_lines) + "\n").encode()
    lines = 0
    with open(path, "wb") as f:
        written = 0
        while written + len(block) <= size:
            f.write(block)
            written += len(block)
            lines += len(block_lines)
    return lines


def spawn(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Popen, not asyncio's subprocess: asyncio's child watcher would reap it before os.wait4."""
    with open(log_path, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "shipper", "run"], env=env, stdout=out,
                                stderr=subprocess.STDOUT)


def exited(pid: int) -> bool:
    return os.waitpid(pid, os.WNOHANG) != (0, 0)


class Sink:
    def __init__(self) -> None:
        self.events = 0
        self.eof = False

    async def handle(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        self.events += len(body["events"])
        self.eof = self.eof or body["eof"]
        return web.json_response({"accepted": len(body["events"]), "duplicate": False})


async def measure(size: int, workdir: Path) -> dict[str, float]:
    volume = workdir / f"vol-{size}"
    (volume / "logs").mkdir(parents=True)
    log = volume / "logs" / "blast.log"
    lines = generate(log, size)
    sink = Sink()
    runner, url = await ingest_on_loopback(sink.handle, 4 * 1024 * 1024)
    env = dict(os.environ, PYTHONPATH=str(ROOT), BLAST_LOGS_DIR=str(volume),
               BLAST_LOGS_AGGREGATOR_URL=url, BLAST_LOGS_TOKEN="bench.token",
               BLAST_LOGS_JOB_ID="bench", BLAST_LOGS_POD="bench-pod", BLAST_LOGS_PHASE="running",
               BLAST_LOGS_METRICS_PORT="0", BLAST_LOGS_STREAM_BUDGET_BYTES=str(2**62), BLAST_LOGS_GRACE="600")
    start = time.monotonic()
    proc = spawn(env, workdir / f"shipper-{size}.log")
    while sink.events < lines:
        await asyncio.sleep(0.1)
        if exited(proc.pid):
            raise RuntimeError("shipper exited early; see its log")
    shipped = time.monotonic() - start
    proc.send_signal(signal.SIGTERM)
    # wait4 on the child itself gives its own peak RSS (ru_maxrss, KiB on Linux).
    _, status, usage = await asyncio.to_thread(os.wait4, proc.pid, 0)
    await runner.cleanup()
    log.unlink()
    return {"bytes": size, "lines": lines, "seconds_to_ship": round(shipped, 2),
            "lines_per_second": round(lines / shipped), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
            "exit": os.waitstatus_to_exitcode(status), "eof_seen": sink.eof}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10M,1G", help="comma-separated sizes (K/M/G suffixes)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-shipper-") as tmp:
        for size in args.sizes.split(","):
            result = await measure(parse_size(size), Path(tmp))
            print(orjson.dumps(result).decode(), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
