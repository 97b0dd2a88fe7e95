"""Generate a BLAST-like container log for the shipper benchmarks (deterministic for a seed).

    .venv/bin/python bench/gen_logs.py OUT [--lines 1000000] [--bytes SIZE] [--seed 1]

Mostly 40-120 character lines of BLAST output (alignments, tabular hits, warnings, `set -x`
traces, download progress); about 3 % carry ANSI colour, 1 % non-ASCII text, 0.5 % carriage-return
progress, 0.2 % are long (1,000-10,000 characters: sequences, JSON dumps), 0.1 % hold a secret
the redactor must hide, and one in 100,000 holds an invalid UTF-8 byte.

`--bytes` (e.g. `100M`, `2G`) writes a file of about that size instead: one block of `--lines`
lines is generated and repeated, so a 2 GB file costs no more to make than a 100 MB one. Either
way the last line ends with a newline. Prints the path, lines and bytes as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Final

DEFAULT_LINES: Final = 1_000_000
DEFAULT_SEED: Final = 1

_TEMPLATES: Final = (
    "Query  {n:<5}{seq}  {m}",
    "Sbjct  {m:<5}{seq}  {n}",
    "            ||||||||||||||||||||||||||||||||||| ||||||||||||||||||||||",
    "query_{n}\tNC_{m:06d}.1\t98.667\t300\t4\t0\t1\t300\t101\t400\t3.71e-155\t532",
    " Score = {m} bits ({n}),  Expect = 4e-{n}",
    " Identities = {n}/{m} (99%), Gaps = 0/{m} (0%)",
    " Strand=Plus/Minus",
    "Warning: [blastn] Query_{n} lcl|query_{m}: Could not calculate ungapped Karlin-Altschul parameters",
    "+ blastn -query /blast/queries/batch_{n:03d}.fa -db core_nt -outfmt 6 -out /results/batch_{n:03d}.out",
    "2026/11/27 21:40:{s:02d} INFO: [P#0-T#{n}] COMPLETED: https://elbstorage.blob.core.windows.net/db/core_nt.{n:02d}.nsq",
    "{pct}.{n} %, {n} Done, 0 Failed, {m} Pending, 0 Skipped, 12 Total, 2-sec Throughput (Mb/s): 812.4389",
    "sp|P0{n}|PROT{m}_HUMAN Synthetic protein {n} OS=Homo sapiens OX=9606 GN=GENE{m}  {m}  4e-{n}",
    "> ref|NC_{m:06d}.1| Homo sapiens chromosome {n}, GRCh38.p14 Primary Assembly",
    "Length={m}",
    "Database: core_nt.{n:03d}; {m} sequences; {n}{m} total letters",
    "[{s:02d}:{n:03d}] vmtouch: Files: 1, Directories: 0, Resident Pages: {m}/{m}  {pct}%",
)
_ANSI: Final = (
    "\x1b[1;31mError:\x1b[0m (CArgException::eInvalidArg) Unknown argument: \"bogus_{n}\"",
    "\x1b[32mINFO\x1b[0m  batch_{n:03d} finished in {m} ms \x1b[2m(core_nt.{pct:02d})\x1b[0m",
    "\x1b[33mWARN\x1b[0m  retrying download of core_nt.{n:02d}.tar.gz (attempt {pct})",
    "\x1b]0;blastn batch {n}\x07\x1b[1mrunning\x1b[22m query {m} of 12000",
)
_NON_ASCII: Final = (
    "µs timing: {n} µs per query — naïve estimate ≈ 3×10⁹ letters; 日本語のテキスト {m}",
    "Zürich-Örebro Ærø cluster node {n}: température {pct} °C, 東京 {m}",
    "Ошибка: не удалось открыть файл batch_{n:03d}.fa (код {m})",
)
_PROGRESS: Final = (
    "{pct}%\r{pct2}%\r100% downloading core_nt.{n:02d}.tar.gz",
    "[=====>    ] {pct}%\r[==========] 100% core_nt.{n:02d}.nsq",
)
_SECRETS: Final = (
    "+ curl -H 'Authorization: Bearer abcdef{n}1234567890abcdef' https://api.example.org/v1/jobs",
    "AZURE_STORAGE_CONNECTION_STRING=DefaultEndpointsProtocol=https;AccountName=elb;AccountKey=Zm9v{n}YmFy==;",
    "GET https://elb.blob.core.windows.net/c/b?sv=2023-11-03&se=2026&sr=c&sp=r&sig=abc{n}def%3D",
    '{{"client_id": "elb", "client_secret": "s3cr3t-{n}"}}',
    "export DB_PASSWORD=hunter{n}x7",
)


def _size(text: str) -> int:
    """`100M`, `2G`, `512k` or plain bytes (binary multiples)."""
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def _fit(line: str, rnd: random.Random) -> str:
    """Stretch or cut an ordinary line to 40-120 characters."""
    want = rnd.randrange(40, 121)
    while len(line) < want:
        line += " " + line
    return line[:want] if len(line) > 120 else line


def _long_line(rnd: random.Random, n: int) -> str:
    size = rnd.randrange(1000, 10_001)
    if rnd.random() < 0.5:
        return f">query_{n} " + "".join(rnd.choices("ACGT", k=size))
    item = f'{{"qseqid": "query_{n}", "sseqid": "NC_0{n}.1", "pident": 98.6, "evalue": 3.7e-155}}, '
    return ('{"hits": [' + item * (size // len(item) + 1))[:size] + "]}"


def generate_block(lines: int, seed: int = DEFAULT_SEED) -> bytes:
    """`lines` newline-terminated lines, the same bytes for the same seed."""
    rnd = random.Random(seed)
    out: list[str] = []
    append = out.append
    templates, choices, rand, randrange = _TEMPLATES, rnd.choice, rnd.random, rnd.randrange
    seqs = ["".join(rnd.choices("ACGT-", k=randrange(30, 61))) for _ in range(4096)]
    for _ in range(lines):
        r = rand()
        n, m, pct = randrange(1, 999), randrange(1, 99999), randrange(0, 100)
        if r < 0.03:
            append(choices(_ANSI).format(n=n, m=m, pct=pct))
        elif r < 0.04:
            append(choices(_NON_ASCII).format(n=n, m=m, pct=pct))
        elif r < 0.045:
            append(choices(_PROGRESS).format(n=n, pct=pct, pct2=min(pct + 7, 99)))
        elif r < 0.047:
            append(_long_line(rnd, n))
        elif r < 0.048:
            append(choices(_SECRETS).format(n=n))
        elif r < 0.04801:
            append(f"corrupt record {n}: \udcff\udcfe in gi|{m}|")
        else:
            seq = seqs[m & 4095]
            append(_fit(choices(templates).format(n=n, m=m, s=n % 60, seq=seq, pct=pct), rnd))
    out.append("")
    return "\n".join(out).encode("utf-8", "surrogateescape")


def write_log(path: Path, *, lines: int = DEFAULT_LINES, size: int | None = None,
              seed: int = DEFAULT_SEED) -> tuple[int, int]:
    """Write the log; returns (lines, bytes) written."""
    block = generate_block(lines, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    if size is None:
        path.write_bytes(block)
        return lines, len(block)
    written = count = 0
    block_lines = block.count(b"\n")
    with open(path, "wb") as f:
        while written < size:
            piece = block
            if size - written < len(block):
                cut = block.rfind(b"\n", 0, size - written) + 1
                piece = block[:cut] if cut > 0 else block[: block.find(b"\n") + 1]
            f.write(piece)
            written += len(piece)
            count += block_lines if piece is block else piece.count(b"\n")
    return count, written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--lines", type=int, default=DEFAULT_LINES, help="lines (per block with --bytes)")
    parser.add_argument("--bytes", dest="size", type=_size, default=None, help="target size, e.g. 2G")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    lines, nbytes = write_log(args.out, lines=args.lines, size=args.size, seed=args.seed)
    print(json.dumps({"path": str(args.out), "lines": lines, "bytes": nbytes}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
