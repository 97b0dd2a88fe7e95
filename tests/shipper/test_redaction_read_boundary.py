"""A secret the file gains in two writes, or that a read splits, is redacted as a whole.

The reader holds a line's first part until its newline arrives, and a PEM block's lines carry the
redactor's state from one read to the next; both are exercised here through the reader and
`sanitise_chunk`, the path the stream takes (the worker path is kept exact by test_shipper_workers).
"""

from __future__ import annotations

import json
from pathlib import Path

from shipper_helpers import ROOT
from test_rules_corpus import kept

from shipper.prepare import sanitise_chunk
from shipper.reader import LineReader
from shipper.sanitise import Sanitiser

RULES_CORPUS = ROOT / "tests" / "data" / "rules-corpus.jsonl"
PEM = [b"-----BEGIN OPENSSH PRIVATE KEY-----", b"b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW",
       b"QyNTUxOQAAACBvZ2hvc3RzZWNyZXRrZXlieXRlc2Zvcm1hdGVzdDEyMzQ1Njc4OTAAAAA", b"-----END OPENSSH PRIVATE KEY-----"]


def _shipped(path: Path, pieces: list[bytes], read_size: int) -> list[str]:
    """Write `pieces` one after another, reading all there is after each, as the stream does."""
    reader = LineReader(path, read_size, 64 * 1024)
    san = Sanitiser()
    out: list[str] = []
    path.write_bytes(b"")
    assert reader.open()
    for piece in pieces:
        with path.open("ab") as f:
            f.write(piece)
        while (chunk := reader.read()) is not None:
            out += sanitise_chunk(san, chunk)
    reader.close()
    return out


def test_a_secret_written_in_two_parts_is_redacted_whole(tmp_path: Path) -> None:
    records = [json.loads(line) for line in RULES_CORPUS.read_text(encoding="utf-8").splitlines()][::7]
    records = [r for r in records if r["secrets"][0] in r["lines"][0]]
    assert len(records) > 300
    for rec in records:
        line = rec["lines"][0].encode()
        secret = rec["secrets"][0].encode()
        cut = line.index(secret) + len(secret) // 2  # the write ends inside the secret
        out = _shipped(tmp_path / "split.log", [b"before\n" + line[:cut], line[cut:] + b"\nafter\n"], 64)
        assert out[0] == "before" and out[-1] == "after", out
        assert not kept(rec["secrets"][0], "\n".join(out)), (rec["kind"], out)


def test_a_private_key_split_across_reads_is_redacted_whole(tmp_path: Path) -> None:
    data = b"start\n" + b"\n".join(PEM) + b"\nend\n"
    for read_size in (16, 37, 64, 4096):
        for cut in (10, len(data) // 2, len(data) - 8):
            out = _shipped(tmp_path / "pem.log", [data[:cut], data[cut:]], read_size)
            assert out == ["start", "[REDACTED:private_key]", "[REDACTED:private_key]",
                           "[REDACTED:private_key]", "[REDACTED:private_key]", "end"], (read_size, cut, out)
