"""Throughput of the shipper's sanitiser on generated BLAST-like lines (not a test: run it by hand).

    .venv/bin/python bench/bench_sanitise.py [--lines 1000000] [--batch 1000]

Lines are 40-120 characters of BLAST-like output; a few percent carry ANSI colour, carriage-return
progress, non-ASCII text or invalid UTF-8, and about one in a thousand carries a secret. Reports
lines/s for `Sanitiser.lines()` (in batches, as the stream pipeline calls it) and `Sanitiser.line()`.
"""

from __future__ import annotations

import argparse
import random
import time

from shipper.sanitise import Sanitiser

_TEMPLATES = (
    "Query  {n:<5}{seq}  {m}",
    "Sbjct  {n:<5}{seq}  {m}",
    "            ||||||||||||||||||||||||||||||||||| ||||||||||||||||||||",
    "query_{n}\tNC_{m:06d}.1\t98.667\t300\t4\t0\t1\t300\t101\t400\t3.71e-155\t532",
    " Score = {m} bits ({n}),  Expect = 4e-155",
    " Identities = {n}/{m} (99%), Gaps = 0/{m} (0%)",
    "Warning: [blastn] Query_{n} lcl|query_{m}: Could not calculate ungapped Karlin-Altschul parameters",
    "+ blastn -query /blast/queries/batch_{n:03d}.fa -db core_nt -outfmt 6 -out /results/batch_{n:03d}.out",
    "2026/11/27 21:40:13 INFO: [P#0-T#{n}] COMPLETED: https://elbstorage.blob.core.windows.net/db/core_nt.{n:02d}.nsq",
    "{pct}.{n} %, {n} Done, 0 Failed, {m} Pending, 0 Skipped, 12 Total, 2-sec Throughput (Mb/s): 812.4389",
    "sp|P0{n}123|PROT{m}_HUMAN Synthetic protein {n} OS=Homo sapiens OX=9606 GN=GENE{m}  {m}  4e-{n}",
)
_SPICE = (
    '\x1b[1;31mError:\x1b[0m (CArgException::eInvalidArg) Unknown argument: "bogus_{n}"',
    "{pct}%\r{pct}%\r100% downloading core_nt.{n:02d}.tar.gz",
    "µs timing: {n} µs per query — naïve estimate ≈ 3×10⁹ letters; 日本語",
    "bad bytes \udcff in gi|{n}|",  # becomes invalid UTF-8 below
)
_SECRETS = (
    "+ curl -H 'Authorization: Bearer abcdef{n}1234567890abcdef' https://api.example.org/v1/jobs",
    "AZURE_STORAGE_CONNECTION_STRING=DefaultEndpointsProtocol=https;AccountName=elb;AccountKey=Zm9v{n}YmFy==;",
    "GET https://elb.blob.core.windows.net/c/b?sv=2023-11-03&se=2026&sr=c&sp=r&sig=abc{n}def%3D",
    '{{"client_id": "elb", "client_secret": "s3cr3t-{n}"}}',
)


def generate(count: int, seed: int = 1) -> list[bytes]:
    rnd = random.Random(seed)
    out = []
    for _ in range(count):
        r = rnd.random()
        n, m, pct = rnd.randrange(1, 999), rnd.randrange(1, 99999), rnd.randrange(0, 100)
        seq = "".join(rnd.choices("ACGT", k=rnd.randrange(30, 60)))
        if r < 0.001:
            line = rnd.choice(_SECRETS).format(n=n)
        elif r < 0.04:
            line = rnd.choice(_SPICE).format(n=n, pct=pct)
        else:
            line = rnd.choice(_TEMPLATES).format(n=n, m=m, seq=seq, pct=pct)
        line = (line * 2)[: rnd.randrange(40, 121)] if len(line) < 40 else line[:120]
        out.append(line.encode("utf-8", "surrogateescape"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()
    raws = generate(args.lines)
    mb = sum(len(r) + 1 for r in raws) / 1e6
    print(f"{len(raws)} lines, {mb:.1f} MB")

    batches = [raws[i : i + args.batch] for i in range(0, len(raws), args.batch)]

    def report(name: str, seconds: float, s: Sanitiser | None = None) -> None:
        extra = f"; redactions={dict(s.redactions)}, truncated={s.truncated}" if s is not None else ""
        print(f"{name:<34} {len(raws) / seconds:>12,.0f} lines/s ({mb / seconds:5.1f} MB/s){extra}")

    # The floor: what any batch-wise pass over the lines costs (join, decode, split).
    t0 = time.perf_counter()
    for batch in batches:
        b"\n".join(batch).decode("utf-8", "replace").split("\n")
    report("floor (join+decode+split)", time.perf_counter() - t0)

    for redact in (False, True):
        s = Sanitiser(redact=redact)
        t0 = time.perf_counter()
        for batch in batches:
            s.lines(batch)
        report(f"lines(batch={args.batch}, redact={redact})", time.perf_counter() - t0, s)

    s = Sanitiser()
    line = s.line
    t0 = time.perf_counter()
    for r in raws:
        line(r)
    report("line() one by one", time.perf_counter() - t0, s)


if __name__ == "__main__":
    main()
