"""The bounded-memory line reader on real files: offsets, long lines, generations, resume."""

from __future__ import annotations

import os
from pathlib import Path

from shipper.reader import Chunk, Cursor, LineReader, char_boundary, count_chars


def read_all(reader: LineReader) -> list[Chunk]:
    chunks = []
    while (chunk := reader.read()) is not None:
        chunks.append(chunk)
    return chunks


def lines_of(chunks: list[Chunk]) -> list[tuple[int, bytes, int]]:
    return [(c.offs[i], c.raws[i], c.extras.get(i, 0)) for c in chunks for i in range(len(c))]


def test_offsets_across_small_reads_and_a_held_partial(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    path.write_bytes(b"alpha\nbe\n\ngamma-delta\ntail")
    reader = LineReader(path, read_size=4, prefix_bytes=1024)
    assert reader.open()
    chunks = read_all(reader)
    assert lines_of(chunks) == [(0, b"alpha", 0), (6, b"be", 0), (9, b"", 0), (10, b"gamma-delta", 0)]
    assert reader.has_partial and reader.cursor == Cursor(reader.dev, reader.ino, 22, 0)
    with open(path, "ab") as f:
        f.write(b" end\n")
    assert lines_of(read_all(reader)) == [(22, b"tail end", 0)]
    assert not reader.has_partial and reader.cursor.pos == 31


def test_huge_line_keeps_a_bounded_prefix_and_counts_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    body = "ü" * 100_000  # 200,000 bytes
    path.write_bytes(b"x\n" + body.encode() + b"\nnext\n")
    reader = LineReader(path, read_size=4096, prefix_bytes=1001)
    assert reader.open()
    got = lines_of(read_all(reader))
    assert [(o, len(r)) for o, r, _ in got] == [(0, 1), (2, 1000), (200_003, 4)]
    assert got[1][1] == ("ü" * 500).encode()  # cut back to a character boundary
    assert got[1][2] == 100_000 - 500
    assert got[2][1] == b"next"


def test_unterminated_huge_line_flushes_with_its_count(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    path.write_bytes(b"a" * 10_000)
    reader = LineReader(path, read_size=1000, prefix_bytes=100)
    assert reader.open()
    assert lines_of(read_all(reader)) == []
    tail = reader.flush_partial()
    assert tail is not None and lines_of([tail]) == [(0, b"a" * 100, 9_900)]
    assert tail.end == 10_000 and reader.flush_partial() is None


def test_truncation_and_replacement_continue_the_count(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    path.write_bytes(b"one\ntwo\n")
    reader = LineReader(path, read_size=64, prefix_bytes=64)
    assert reader.open()
    assert [o for o, _, _ in lines_of(read_all(reader))] == [0, 4]
    assert reader.check_generation() is None
    path.write_bytes(b"3\n")  # truncated in place
    change = reader.check_generation()
    assert change is not None
    tail, gen = change
    assert tail is None and gen.reason == "truncated" and gen.lost_bytes == 0 and gen.cursor.base == 8
    assert lines_of(read_all(reader)) == [(8, b"3", 0)]
    with open(path, "ab") as f:
        f.write(b"unfinished")
    read_all(reader)
    os.rename(path, tmp_path / "a.log.1")  # rotated: a new inode takes the name
    path.write_bytes(b"new\n")
    assert read_all(reader) == []
    change = reader.check_generation()
    assert change is not None
    tail, gen = change
    assert tail is not None and lines_of([tail]) == [(10, b"unfinished", 0)]
    assert gen.reason == "replaced" and gen.cursor.base == 20
    assert lines_of(read_all(reader)) == [(20, b"new", 0)]


def test_resume_from_a_cursor_and_from_a_stale_one(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    path.write_bytes(b"one\ntwo\nthree\n")
    st = path.stat()
    reader = LineReader(path, 64, 64, resume=Cursor(st.st_dev, st.st_ino, 4, 100))
    assert reader.open()
    assert lines_of(read_all(reader)) == [(104, b"two", 0), (108, b"three", 0)]
    stale = LineReader(path, 64, 64, resume=Cursor(st.st_dev, st.st_ino + 1, 4, 100))
    assert stale.open() and stale.note
    assert lines_of(read_all(stale))[0] == (104, b"one", 0)


def test_char_helpers() -> None:
    data = "aé€😀".encode()
    assert count_chars(data) == 4
    assert char_boundary(data, 2) == 1 and char_boundary(data, 3) == 3 and char_boundary(data, 99) == len(data)
    assert count_chars(b"\xff\xfe") == 2
