"""Time `build_artifacts` (and chunk serialisation) on synthetic jobs: N lines over 10 streams.

Run: `.venv/bin/python bench/bench_artifacts.py [LINES ...]` (default 100000 1000000).
Two shapes per size: disjoint batches (the usual case) and every stream re-sent once with other
batch boundaries and newer ts (the copy-resolving path).
"""

from __future__ import annotations

import sys
import time

from aggregator.artifacts import build_artifacts, chunk_body
from aggregator.model import Dropped, StoredBatch

STREAMS = 10
BATCH_EVENTS = 1000
CONTAINERS = ("blast", "results-export", "vmtouch", "get-blastdb", "helper")


def synth(lines: int, *, reformed: bool) -> list[StoredBatch]:
    per = lines // STREAMS
    out: list[StoredBatch] = []
    for s in range(STREAMS):
        pod, ctr = f"pod-{s // len(CONTAINERS)}", CONTAINERS[s % len(CONTAINERS)]
        events = [(100 * i, 1.7e9 + s + i * 1e-3, f"{ctr} line {i} " + "x" * 80) for i in range(per)]
        seq = 0
        shapes = [(0, BATCH_EVENTS)] + ([(BATCH_EVENTS // 3, 0.5)] if reformed else [])
        for start, later in shapes:
            step = BATCH_EVENTS
            for lo in range(start, per, step):
                part = tuple((o, ts + later, t) for o, ts, t in events[lo : lo + step])
                drop = Dropped(100 * lo - 50, 2, 200) if lo and lo % 50000 == 0 else None
                out.append(StoredBatch("bench", pod, ctr, "running", seq, lo + step >= per, 0, drop, part))
                seq += 1
    return out


def main(sizes: list[int]) -> None:
    for lines in sizes:
        for reformed in (False, True):
            batches = synth(lines, reformed=reformed)
            events = sum(len(b.events) for b in batches)
            t0 = time.perf_counter()
            art = build_artifacts(batches)
            t1 = time.perf_counter()
            nbytes = sum(
                len(chunk_body("bench", phase, i, chunk))
                for phase, chunks in art.phases.items()
                for i, chunk in enumerate(chunks)
            )
            t2 = time.perf_counter()
            shape = "reformed" if reformed else "disjoint"
            kept = sum(step["lines"] for step in art.steps.values())
            print(
                f"{lines:>9} lines {shape:8} ({events} events in {len(batches)} batches): "
                f"build {t1 - t0:6.2f} s, serialise {t2 - t1:5.2f} s "
                f"({kept} lines kept, {nbytes / 1e6:.1f} MB of chunks)"
            )


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [100_000, 1_000_000])
