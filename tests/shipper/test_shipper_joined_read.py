"""The reader's joined buffer and line ends give the sanitiser exactly what it would build itself."""

from __future__ import annotations

import random
from pathlib import Path

from shipper.reader import LineReader, line_ends
from shipper.sanitise import Sanitiser

TRICKY = [
    b"plain BLAST line 1234 hits",
    b"\x1b[31mred\x1b[0m password=hunter2x9",
    b"10%\r50%\r100% token: ghp_" + b"a" * 36,
    b"caf\xc3\xa9 \xc2\x85 next-line control, invalid \xff byte",
    b"pa\x1b[0mss" + b"word=s3cretvalue1",
    b"",
    b"\t tabbed  AKIAABCDEFGHIJKLMNOP",
    b"x" * 5000,
    b"-----BEGIN RSA PRIVATE KEY-----",
    b"MIIEow",
    b"-----END RSA PRIVATE KEY-----",
    b"- name: DB_PASSWORD",
    b'  value: "p4ss-w0rd"',
]


def test_chunks_carry_their_joined_lines_and_the_sanitiser_agrees(tmp_path: Path) -> None:
    rng = random.Random(6)
    lines = [rng.choice(TRICKY) for _ in range(3000)] + [b"y" * 70_000, b"after the long line"]
    path = tmp_path / "blast.log"
    path.write_bytes(b"".join(line + b"\n" for line in lines) + b"unterminated")
    reader = LineReader(path, 4096, 64 * 1024)
    assert reader.open()
    plain, fast = Sanitiser(), Sanitiser()
    joined_chunks = 0
    while (chunk := reader.read()) is not None:
        if chunk.joined is None:
            continue
        joined_chunks += 1
        assert not chunk.extras
        assert chunk.joined == b"\n".join(chunk.raws)
        ends = [off - chunk.offs[0] for off in chunk.offs[1:]] + [chunk.end - chunk.offs[0]]
        assert ends == line_ends(chunk.raws)
        assert fast.lines(chunk.raws, chunk.joined, ends) == plain.lines(chunk.raws)
    reader.close()
    assert joined_chunks > 10
    assert fast.redactions == plain.redactions and sum(plain.redactions.values()) > 100
    assert fast.truncated == plain.truncated > 0
