"""A job container's flood, paced: numbered lines of a fixed size at a fixed rate on stdout.

    python bench/paced_writer.py LINE_BYTES COUNT RATE_BYTES_PER_S

Line i is `%010d ` then filler `x`s, newline included LINE_BYTES long, so it starts at stream
offset i * LINE_BYTES and a receiver can check each line it gets. Used by bench/bench_reclaim.py
and tests/shipper/test_shipper_reclaim.py under `logwrap`.
"""

from __future__ import annotations

import sys
import time


def line(i: int, size: int) -> bytes:
    return b"%010d %s\n" % (i, b"x" * (size - 12))


def main(argv: list[str]) -> None:
    size, count, rate = int(argv[0]), int(argv[1]), float(argv[2])
    out = sys.stdout.buffer
    per = max(65536 // size, 1)
    start = time.monotonic()
    i = 0
    while i < count:
        k = min(per, count - i)
        out.write(b"".join(line(j, size) for j in range(i, i + k)))
        out.flush()
        i += k
        ahead = i * size / rate - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)


if __name__ == "__main__":
    main(sys.argv[1:])
