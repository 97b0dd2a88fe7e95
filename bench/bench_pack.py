"""Prepare, pack and encode the bench file in process, for several source trees in alternation.

    .venv/bin/python bench/bench_pack.py --tree now=. --tree before=/tmp/base10 [--rounds 3]

What the shipper does per line between its reads and its sends, without the event loop's I/O: each
child (`PYTHONPATH=<tree>`, so each imports its own `shipper` and compiled `_hotpath`) reads the
file as the shipper does (256 KiB reads), then, timed (its best CPU time of three passes, reading
left out): `prepare` every read from the clean state, `Packer.place` it into batches of the
default limits, and `encode_batch` every batch as the sender would. It also reports a digest of
all the bodies, which must be the same for every tree. Not a test: run it by hand
(docs/benchmarks.md, "The shipper's CPU per line, round nine").
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import os
import resource
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

from bench_prepare import alternate, parse_args, read_chunks


def child(path: Path) -> dict[str, object]:
    from blastlogs.protocol import MAX_BATCH_BYTES, MAX_BATCH_EVENTS
    from shipper.batch import Identity, Limits, encode_batch
    from shipper.metrics import ShipperMetrics
    from shipper.packer import Packer
    from shipper.prepare import prepare
    from shipper.reader import Cursor
    from shipper.redact import CLEAN_STATE
    from shipper.sanitise import Sanitiser
    from shipper.tailring import TailRing

    # one read time for every run: the same bodies
    chunks = [replace(chunk, ts=1796640000.25) for chunk in read_chunks(path)]
    ident = Identity("elb-bench", "pod", "container", "running")
    limits = Limits.for_body(ident, MAX_BATCH_EVENTS, MAX_BATCH_BYTES)

    class Bodies:  # the outbox, encoding each batch as the sender would
        def __init__(self, digest: bool) -> None:
            self.seq = 0
            self.hash = hashlib.sha256() if digest else None

        async def put(self, batch: object) -> None:
            body = encode_batch(ident, self.seq, batch)  # type: ignore[arg-type]
            self.seq += 1
            if self.hash is not None:
                self.hash.update(body)

        async def close(self) -> None:
            pass

    async def run(digest: bool) -> Bodies:
        san = Sanitiser()
        out = Bodies(digest)
        packer = Packer("bench", "container", limits, 1 << 62, TailRing(1 << 20), 0.3, out,  # type: ignore[arg-type]
                        ShipperMetrics())
        for chunk in chunks:
            await packer.place(chunk, prepare(san, chunk, CLEAN_STATE))
        await packer.finish(Cursor(0, 0, 0, 0))
        return out

    best, faults = float("inf"), 0
    for _ in range(3):
        gc.collect()
        start, flt = time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        asyncio.run(run(False))
        took = time.process_time() - start
        if took < best:
            best, faults = took, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - flt
    bodies = asyncio.run(run(True))
    assert bodies.hash is not None
    return {"lines": sum(c.count for c in chunks), "batches": bodies.seq, "pack_s": round(best, 3), "page_faults": faults,
            "digest": bodies.hash.hexdigest()[:16]}


def main() -> int:
    args = parse_args(__doc__.splitlines()[0], 3)
    if args.child:
        print(json.dumps(child(args.file)))
        return 0
    results = alternate(__file__, args, lambda: f" (load {os.getloadavg()[0]:.1f})")
    for name, runs in results.items():
        times = [float(str(x["pack_s"])) for x in runs]
        print(f"{name}: prepare+pack+encode {statistics.median(times):.3f} CPU s median "
              f"({min(times):.3f}-{max(times):.3f}), digest {runs[0]['digest']}")
    digests = {str(x["digest"]) for runs in results.values() for x in runs}
    print("bodies identical across trees" if len(digests) == 1 else f"BODIES DIFFER: {sorted(digests)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
