"""A container's heavy writer: numbered lines at a controlled rate, each also recorded in a side file.

Run as a script (it imports nothing from the project, like a program in a job's image):

    writer.py lines --tag rx1 --count 5000 --rate 2500 --record rx1.record [--start 0] [--exit-code 0]
    writer.py raw --source mess.bin [--huge-bytes 20971520]

`lines` writes `"{tag} {n:09d} {filler}"` lines, plain ASCII so the shipper passes them unchanged, and
appends each to `--record` after it reached stdout: the record is what the program really wrote, kept
apart from logwrap's log. A restarted container appends to the same record. `raw` copies prepared
bytes to stdout and may end with one huge line that has no newline.
"""

from __future__ import annotations

import argparse
import sys
import time

#: How often a rate-limited writer wakes up to write the lines that are due.
TICK_SECONDS = 0.01
#: Lines per write when there is no rate limit.
BURST_LINES = 1000
FILLER = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
HUGE_PATTERN = b"0123456789"
HUGE_PIECE = 1024 * 1024


def numbered_line(tag: str, n: int, width: int) -> str:
    """The n-th line of writer `tag`: unique, ASCII, `width` characters of filler."""
    return f"{tag} {n:09d} {(FILLER * (width // len(FILLER) + 1))[n % len(FILLER):][:width]}"


def write_lines(tag: str, start: int, count: int, rate: float, width: int, record_path: str) -> None:
    out = sys.stdout.buffer
    began = time.monotonic()
    written = 0
    with open(record_path, "a", encoding="ascii") as record:
        while written < count:
            if rate > 0:
                due = min(count, int((time.monotonic() - began) * rate) + 1)
                if due <= written:
                    time.sleep(TICK_SECONDS)
                    continue
            else:
                due = min(count, written + BURST_LINES)
            lines = [numbered_line(tag, start + i, width) + "\n" for i in range(written, due)]
            text = "".join(lines)
            out.write(text.encode("ascii"))
            out.flush()
            record.write(text)
            record.flush()
            written = due


def write_raw(source: str, huge_bytes: int) -> None:
    out = sys.stdout.buffer
    with open(source, "rb") as f:
        for piece in f:
            out.write(piece)
            out.flush()
            time.sleep(0.001)
    left = huge_bytes
    block = HUGE_PATTERN * (HUGE_PIECE // len(HUGE_PATTERN))
    while left > 0:
        n = min(left, len(block))
        out.write(block[:n])
        left -= n
    out.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="writer.py")
    sub = parser.add_subparsers(dest="mode", required=True)
    lines = sub.add_parser("lines")
    lines.add_argument("--tag", required=True)
    lines.add_argument("--count", type=int, required=True)
    lines.add_argument("--rate", type=float, default=0.0, help="lines per second; 0: as fast as possible")
    lines.add_argument("--width", type=int, default=60)
    lines.add_argument("--start", type=int, default=0)
    lines.add_argument("--record", required=True)
    lines.add_argument("--exit-code", type=int, default=0)
    raw = sub.add_parser("raw")
    raw.add_argument("--source", required=True)
    raw.add_argument("--huge-bytes", type=int, default=0)
    args = parser.parse_args(argv)
    if args.mode == "lines":
        write_lines(args.tag, args.start, args.count, args.rate, args.width, args.record)
        return int(args.exit_code)
    write_raw(args.source, args.huge_bytes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
