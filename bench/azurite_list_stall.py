"""How long one list of a job's staging holds Azurite, and what a put waits meanwhile (issue 16, fifth round).

Azurite runs as `bench_bigjob.py` runs it (disk persistence, `--location`). It stores `--keys` small blobs
under a job's staging prefix and `--others` elsewhere, then a probe puts one blob every 20 ms: for 4 s
idle, then while the job's prefix is listed four times (pages of 5,000, Azure's default, then of
`--page`, alternated). Prints each list's time and the probe's latencies in order.

    .venv/bin/python bench/azurite_list_stall.py --keys 2000 --others 8000
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from conftest import Azurite, azurite_binary, free_port  # noqa: E402

from aggregator.fanout import run_bounded  # noqa: E402
from aggregator.storage import open_store  # noqa: E402
from aggregator.storage.azure import AzureStore  # noqa: E402


async def run(keys: int, others: int, page: int) -> None:
    binary = azurite_binary()
    if binary is None:
        raise SystemExit("azurite-blob not installed (scripts/bootstrap.sh installs it)")
    az = Azurite(binary=binary, port=free_port(), location=Path(tempfile.mkdtemp(prefix="azlist-")))
    az.start()
    try:
        store = open_store("azure://bench", azure_connection_string=az.connection_string)
        prober = open_store("azure://bench", azure_connection_string=az.connection_string)
        assert isinstance(store, AzureStore)
        await run_bounded(16, (partial(store.put, f"job/_staging/p{i}/c/b-{i}.json", b"x" * 600) for i in range(keys)))
        await run_bounded(16, (partial(store.put, f"other/{i}.json", b"x") for i in range(others)))
        for phase in ("idle", "lists"):
            latencies: list[float] = []
            stop = asyncio.Event()

            async def probe(phase: str = phase, latencies: list[float] = latencies, stop: asyncio.Event = stop) -> None:
                i = 0
                while not stop.is_set():
                    t0 = time.perf_counter()
                    await prober.put(f"probe/{phase}/{i}.json", b"p")
                    latencies.append((time.perf_counter() - t0) * 1000)
                    i += 1
                    await asyncio.sleep(0.02)

            task = asyncio.create_task(probe())
            if phase == "idle":
                await asyncio.sleep(4)
            else:
                for per in (5000, page, 5000, page):
                    t0 = time.perf_counter()
                    names = [n async for n in store._client.list_blob_names(
                        name_starts_with="job/_staging/", results_per_page=per)]
                    print(f"list of {len(names)} keys in pages of {per}: {time.perf_counter() - t0:.3f} s")
                    await asyncio.sleep(0.5)
            stop.set()
            await task
            ordered = sorted(latencies)
            print(f"{phase}: probe puts n {len(ordered)}, p50 {ordered[len(ordered) // 2]:.1f} ms, "
                  f"max {ordered[-1]:.1f} ms; in order: {[round(x) for x in latencies]}")
        await store.close()
        await prober.close()
    finally:
        az.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=2000)
    ap.add_argument("--others", type=int, default=8000)
    ap.add_argument("--page", type=int, default=250)
    args = ap.parse_args()
    asyncio.run(run(args.keys, args.others, args.page))


if __name__ == "__main__":
    main()
