"""What the job's containers run: real BLAST+ on a generated database, the heavy writer, a messy writer."""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass
from pathlib import Path

from blastlogs.protocol import cut_marker, kept_chars
from rig.writer import HUGE_PATTERN

WRITER = Path(__file__).resolve().parent / "writer.py"
#: BLAST+ is called with this option in the failing pod: it prints its usage and `Error: Unknown argument`.
BAD_BLAST_OPTION = "-no_such_option"


def random_dna(rng: random.Random, length: int) -> str:
    return "".join(rng.choice("ACGT") for _ in range(length))


def write_fasta(path: Path, records: list[tuple[str, str]]) -> None:
    path.write_text("".join(f">{name}\n{seq}\n" for name, seq in records), encoding="ascii")


@dataclass(frozen=True)
class BlastInputs:
    subjects: Path
    queries: Path
    db: Path


def make_blast_inputs(work: Path, *, subjects: int = 40, length: int = 400, seed: int = 7) -> BlastInputs:
    """Random subject sequences, and queries cut from some of them (so BLAST finds real hits)."""
    rng = random.Random(seed)
    subs = [(f"subj{i}", random_dna(rng, length)) for i in range(subjects)]
    queries = [(f"query{i}", subs[i * 3][1][50:250]) for i in range(min(5, subjects // 3))]
    work.mkdir(parents=True, exist_ok=True)
    inputs = BlastInputs(subjects=work / "subjects.fa", queries=work / "queries.fa", db=work / "db" / "rigdb")
    write_fasta(inputs.subjects, subs)
    write_fasta(inputs.queries, queries)
    return inputs


def makeblastdb_argv(inputs: BlastInputs) -> list[str]:
    return ["makeblastdb", "-in", str(inputs.subjects), "-dbtype", "nucl", "-out", str(inputs.db),
            "-title", "rig", "-parse_seqids"]


def blastn_argv(inputs: BlastInputs, *, bad_option: bool = False) -> list[str]:
    argv = ["blastn", "-query", str(inputs.queries), "-db", str(inputs.db), "-outfmt", "7",
            "-max_target_seqs", "5"]
    return [*argv, BAD_BLAST_OPTION] if bad_option else argv


def writer_argv(tag: str, count: int, record: Path, *, rate: float = 0.0, start: int = 0,
                exit_code: int = 0, width: int = 60) -> list[str]:
    return [sys.executable, str(WRITER), "lines", "--tag", tag, "--count", str(count), "--rate", str(rate),
            "--start", str(start), "--record", str(record), "--exit-code", str(exit_code), "--width", str(width)]


def raw_writer_argv(source: Path, huge_bytes: int) -> list[str]:
    return [sys.executable, str(WRITER), "raw", "--source", str(source), "--huge-bytes", str(huge_bytes)]


#: Lines with what a terminal would show for them: the shipper's sanitising, stated independently.
MESSY_LINES: tuple[tuple[bytes, str], ...] = (
    (b"\x1b[1;31mERROR\x1b[0m: colour codes around a word", "ERROR: colour codes around a word"),
    (b"bad bytes \xff\xfe here and a lone \xc3 too", "bad bytes \ufffd\ufffd here and a lone \ufffd too"),
    (b"\x1b]0;window title\x07after an OSC title", "after an OSC title"),
    (b"bell\x07 and nul\x00 controls", "bell and nul controls"),
    (b"tab\tstays", "tab\tstays"),
    (b"\xe2\x9c\x93 valid UTF-8 passes", "\u2713 valid UTF-8 passes"),
)


def messy_source(normal_lines: int) -> tuple[bytes, list[str]]:
    """Normal lines with the messy ones spread among them: (bytes to write, the lines expected stored)."""
    data: list[bytes] = []
    expected: list[str] = []
    for i in range(normal_lines):
        if i % max(1, normal_lines // len(MESSY_LINES)) == 0 and i // max(1, normal_lines // len(MESSY_LINES)) < len(MESSY_LINES):
            raw, want = MESSY_LINES[i // max(1, normal_lines // len(MESSY_LINES))]
            data.append(raw + b"\n")
            expected.append(want)
        line = f"normal output line {i:06d}"
        data.append(line.encode() + b"\n")
        expected.append(line)
    return b"".join(data), expected


def huge_line_expected(huge_bytes: int, max_chars: int) -> str:
    """The one capped event a huge ASCII line without newline becomes: its head and the cut marker."""
    keep = kept_chars(huge_bytes, max_chars)
    head = (HUGE_PATTERN * (keep // len(HUGE_PATTERN) + 1))[:keep].decode("ascii")
    return head + cut_marker(huge_bytes - keep)
