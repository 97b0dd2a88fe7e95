"""The compiled hot path (shipper/_hotpath.c) gives `prepare` the same bytes as the pure-Python path.

`prepare` uses the compiled module for plain reads from the clean redactor state; with
`shipper.prepare._hotpath` set to None it takes the pure-Python path the shipper falls back to
when the wheel was built without a C compiler. Every test here prepares the same reads both ways.
"""

from __future__ import annotations

import random
import shutil
import time
from array import array
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import shipper.prepare as prepare_mod
from shipper.batch import Batch, Events, Identity, Limits, encode_batch
from shipper.prepare import Prepared, prepare
from shipper.reader import Chunk, Cursor, LineReader
from shipper.redact import _NEEDLES, CLEAN_STATE, RedactorState, _find_py, marks_py
from shipper.sanitise import Sanitiser, render

compiled_only = pytest.mark.skipif(not prepare_mod.COMPILED, reason="shipper._hotpath is not built")


def test_built_wherever_a_c_compiler_is() -> None:
    """The extension is optional (a wheel builds without a compiler), so its tests skip without it:
    where a compiler is at hand, as on CI and the image build host, it must have been built."""
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler here")
    assert prepare_mod.COMPILED, "shipper/_hotpath.c was not built: pip install -e . (or setup.py build_ext --inplace)"

_FRAGMENTS = [
    b"Query  1    CTGTGTCCACCCC  60", b"query_1\tNC_001.1\t98.667", b"Homo sapiens", b"\t", b'"', b"\\",
    b'\\"', b'","', b"\x1b[1;31m", b"\x1b[0m", b"\x1b]0;t\x07", b"\r", b"\x08", b"\x00", b"\x7f", b"\x85",
    b"\xc2\x85", b"\xc2\xa0", b"\xff", b"\xe2\x82", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf",
    b"\xe0\x80\xaf", b"\xf0\x80\x80\xaf", "µs ≈ 日本 😀 \u2028".encode(), b" ", b"=", b": ",
    b"password=hunter2", b"token: abc123def456", b'"api_key": "k3y-value"', b"api", b"Api", b"s.",
    b"Authorization: Bearer abcdefghijklmnop1234", b"https://u:p4ss@host/x", b"?sv=2023&sig=abc%3D&se=1",
    b"AccountKey=Zm9vYmFy==;", b"AKIAIOSFODNN7EXAMPLE", b"ghp_abcdefghijklmnopqrstuvwxyz0123456789",
    b"-----BEGIN PRIVATE KEY-----", b"-----END PRIVATE KEY-----", b"MIIEvQIBADANBgkqhkiG9w0BAQEFAASC",
    b"- name: DB_PASSWORD", b"  value: hunter2-Xy9", b"x" * 300, "é".encode() * 70,
    b"\x1b[2K", b"\x1b[1K", b"\x1b[5G", b"\x1b[3C", b"\x1b[D", b"\x1b(B", b"\x1b]0;title\x1b\\", b"50%\r100%",
]

line_strategy = st.lists(st.sampled_from(_FRAGMENTS), max_size=8).map(b"".join)


def chunk_of(lines: list[bytes], first: int = 1000, ts: float = 1796640000.25) -> Chunk:
    joined = b"\n".join(lines)
    end = first + len(joined) + 1
    return Chunk(first, len(lines), end, ts, Cursor(1, 2, end, 0), joined)


def both(chunk: Chunk, start: RedactorState = CLEAN_STATE, limit: int = 4000) -> tuple[Prepared, Prepared]:
    compiled = prepare(Sanitiser(max_chars=limit), chunk, start)
    saved = prepare_mod._hotpath
    prepare_mod._hotpath = None  # type: ignore[assignment]
    try:
        pure = prepare(Sanitiser(max_chars=limit), chunk, start)
    finally:
        prepare_mod._hotpath = saved
    return compiled, pure


def assert_same(compiled: Prepared, pure: Prepared) -> None:
    assert compiled.events == pure.events
    assert compiled.offs == pure.offs
    assert compiled.encoded == pure.encoded  # the one buffer, where each event starts, each line's offset
    assert compiled.redactions == pure.redactions
    assert compiled.truncated == pure.truncated
    assert (compiled.start, compiled.state) == (pure.start, pure.state)


@compiled_only
@settings(max_examples=400, deadline=None)
@given(st.lists(line_strategy, min_size=1, max_size=40), st.sampled_from([4000, 120, 60, 1]))
def test_same_events_as_the_pure_path(lines: list[bytes], limit: int) -> None:
    assert_same(*both(chunk_of(lines), limit=limit))


@compiled_only
@settings(max_examples=100, deadline=None)
@given(st.lists(line_strategy, min_size=1, max_size=20))
def test_same_events_from_an_open_pem_block_or_env_name(lines: list[bytes]) -> None:
    for start in ((0, ""), (-1, "DB_PASSWORD")):  # not the clean state: the pure path does it all
        assert_same(*both(chunk_of(lines), start))


@compiled_only
def test_every_byte_value_in_every_position() -> None:
    """Each of the 256 byte values alone, before and after text, and after each UTF-8 lead byte."""
    lines = []
    for b in range(256):
        if b == 0x0A:
            continue
        one = bytes([b])
        lines += [one, b"a" + one, one + b"z", b"\xc2" + one, b"\xe2\x82" + one, b"\xf0\x9f\x98" + one]
    assert_same(*both(chunk_of(lines)))


@compiled_only
def test_every_byte_value_at_every_place_in_a_block() -> None:
    """Each byte value at each place of the scan's blocks of 8 and 16 bytes (and past them), in lines
    that end inside, at and past a block, at the read's end, and around the character cap."""
    lines = []
    for b in range(256):
        if b == 0x0A:
            continue
        for at in (0, 1, 7, 8, 14, 15, 16, 17, 31, 32, 33):
            lines += [b"x" * at + bytes([b]) + b"y" * (at % 5)]
    assert_same(*both(chunk_of(lines)))
    for limit in (14, 15, 16, 17, 31, 32, 33):
        assert_same(*both(chunk_of(lines), limit=limit))
        assert_same(*both(chunk_of([b"z" * n for n in range(0, 40)] + [b"\t" * 20, "é".encode() * 17]), limit=limit))
    for n in range(0, 34):  # the read's last line, no bytes past it to read
        assert_same(*both(chunk_of([b"a" * 40, b"b" * n])))
        assert_same(*both(chunk_of([b"a" * 40, b"b" * n + b'"'])))


@compiled_only
def test_events_longer_than_the_buffer_first_made_for_them() -> None:
    """The compiled path sizes a read's buffer for lines as they are; escapes (quotes, backslashes,
    tabs) and rendered cursor moves make events longer, and its buffer grows, in every position."""
    for count in (1, 2, 50):
        for line in (b'"' * 3000, b"\\\t" * 700, b"\x1b[900Cx", b"a\x1b[2000Gb", b"\t" * 5000):
            for lines in ([line] * count, [b"plain"] * count + [line], [line] + [b""] * count):
                compiled, pure = both(chunk_of(lines))
                assert_same(compiled, pure)
                assert max(map(len, compiled.events)) > len(line) + 60


@compiled_only
def test_bodies_from_either_path_are_the_same_bytes(tmp_path: Path) -> None:
    """A file packed and encoded as the shipper does, once from the compiled path's buffers (with
    lines spliced in) and once from the pure path's events: the same request bodies."""
    lines = [raw for i in range(3000) for raw in (b"Query= seq%d" % i, b"  score 42\t\"ok\"",
                                                     b"password=hunter2-%d" % i if i % 97 == 0 else b"x" * (i % 300),
                                                     b"50%\r100%" if i % 13 == 0 else "é µs".encode())]
    chunks = [chunk_of(lines[k:k + 700], first=sum(len(x) + 1 for x in lines[:k])) for k in range(0, len(lines), 700)]
    limits = Limits(200, 20_000)
    ident = Identity("elb-1", "pod", "c", "running")

    def bodies(compiled: bool) -> list[bytes]:
        saved = prepare_mod._hotpath
        if not compiled:
            prepare_mod._hotpath = None  # type: ignore[assignment]
        try:
            san, batches, b = Sanitiser(), [], Batch()
            for chunk in chunks:
                run = prepare(san, chunk, CLEAN_STATE).encoded
                i = 0
                while i < len(run):
                    if b.full_for(run.bounds[i + 1] - run.bounds[i] - 1, limits):
                        batches.append(b)
                        b = Batch()
                    j, _ = b.fitting(run, i, len(run), limits)
                    b.take(run, i, j, 1.0)
                    i = j
            return [encode_batch(ident, seq, x) for seq, x in enumerate([*batches, b])]
        finally:
            prepare_mod._hotpath = saved

    compiled = bodies(True)
    assert compiled == bodies(False) and len(compiled) > 10
    events = [e for body in compiled for e in orjson.loads(body)["events"]]
    assert [e["off"] for e in events] == [sum(len(x) + 1 for x in lines[:i]) for i in range(len(lines))]
    assert "hunter2" not in b"".join(compiled).decode()
    first, second = Batch(runs=[(prepare(Sanitiser(), chunks[0], CLEAN_STATE).encoded, 3, 9)], count=6).split()
    assert first.offs + second.offs == [e["off"] for e in events[3:9]]


@compiled_only
def test_events_decode_to_the_lines_and_offsets_count_bytes() -> None:
    lines = [b"plain", b'say "hi"\tthere \\ back', "é日本😀".encode(), b"", b"last"]
    compiled, _ = both(chunk_of(lines, first=7, ts=12.5))
    assert [orjson.loads(e) for e in compiled.events] == [
        {"off": off, "ts": 12.5, "line": raw.decode()} for off, raw in zip(compiled.offs, lines, strict=True)]
    assert compiled.offs == [7 + sum(len(raw) + 1 for raw in lines[:i]) for i in range(len(lines))]
    assert compiled.offs[3] == 7 + 6 + 22 + 13  # bytes, not characters


@compiled_only
def test_a_pem_block_split_over_clean_lines_is_redacted_whole() -> None:
    """The block's body lines hold no needle: the compiled path must hand the read back to the
    line-by-line path rather than encode them as they are."""
    body = [b"MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7", b"q1w2e3r4t5y6u7i8o9p0asdfghjklzxcvbnm"]
    lines = [b"starting", b"-----BEGIN PRIVATE KEY-----", *body, b"-----END PRIVATE KEY-----", b"done"]
    compiled, pure = both(chunk_of(lines))
    assert_same(compiled, pure)
    shipped = b"".join(compiled.events)
    assert not any(part in shipped for part in body)


@compiled_only
def test_a_secret_that_rendering_joins_is_redacted() -> None:
    """Escapes and a carriage return split the needle in the raw bytes; the rendered line holds it."""
    lines = [b"pass\x1b[0mword=hunter2-Xy9", b"xx\rpassword=hunter2-Xy9", b"\x1b[1mtoken: abc123def456ghi", b"ok"]
    compiled, pure = both(chunk_of(lines))
    assert_same(compiled, pure)
    shipped = b"".join(compiled.events)
    assert b"hunter2" not in shipped and b"abc123def456ghi" not in shipped


_RENDER_PIECES = [
    b"a", b"bc", b" ", b"\t", b"\r", b"\x08", b"\x1b", b"[", b"]", b"P", b"X", b"^", b"_", b"\\", b"0", b"1", b"2",
    b"12", b";", b"K", b"G", b"C", b"D", b"m", b"\x07", b"\x00", b"\x7f", b"\x1f", b"?", b"/", b"~", b"@",
    b"\x1b[", b"\x1b]0;t\x07", b"\x1b[1;31m", b"\x1b[2K", b"\x1b[K", b"\x1b[1K", b"\x1b[5G", b"\x1b[0G",
    b"\x1b[00K", b"\x1b[3C", b"\x1b[D", b"\x1b[99999C", "é日".encode(), b"\xc2\x85", b"\xff", b"\xc2", b"\x1b\\",
    b"\x1b(B", b"\x1b #8", b"\x1bP", b"\x1b_x",
]


@compiled_only
@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(_RENDER_PIECES), max_size=14).map(b"".join))
def test_compiled_render_is_sanitise_render(line: bytes) -> None:
    """Where the C renderer models a line (None where it does not), it gives `render`'s text."""
    got = prepare_mod._hotpath.render(line)
    if got is not None:
        assert got == render(line.decode("utf-8", "replace")).encode()


def test_compiled_render_models_the_common_shapes() -> None:
    if not prepare_mod.COMPILED:
        pytest.skip("shipper._hotpath is not built")
    hp = prepare_mod._hotpath
    assert hp.render(b"\x1b[1;31mError:\x1b[0m bad") == b"Error: bad"
    assert hp.render(b"\x1b]0;blastn\x07running") == b"running"
    assert hp.render(b"[==>  ] 10%\r[=====] 100%") == b"[=====] 100%"
    assert hp.render("10%\r100% é".encode()) is None  # moves the cursor over non-ASCII: Python renders it
    assert hp.render(b"\xff\x1b[0m") is None


_MARK_PIECES = [b".", b"API", b"AP", b"I", b"a", b"_", b"-", b"=", b"\n", b" ", b"Zz09" * 5, b"x" * 43, b"y" * 42, b"\xff"]


@compiled_only
@settings(max_examples=2000, deadline=None)
@given(st.lists(st.sampled_from(_MARK_PIECES), max_size=20).map(b"".join))
def test_compiled_marks_are_the_searches(data: bytes) -> None:
    assert prepare_mod._hotpath.marks(data) == marks_py(data)
    assert prepare_mod._hotpath.marks(b"t ." + b"A" * 43 + b" API.") == ([47], [2])


#: Needles whole, cut short and in mixed case, with bytes around and between them (overlaps, one
#: needle inside another, case): the compiled scan must give the automaton's matches exactly.
_NEEDLE_PIECES = st.one_of(
    st.sampled_from([n[0] for n in _NEEDLES]).flatmap(
        lambda n: st.tuples(st.integers(1, len(n)), st.integers(0, 2**len(n) - 1)).map(
            lambda cut_case: bytes(c - 32 if 97 <= c <= 122 and cut_case[1] >> i & 1 else c
                                   for i, c in enumerate(n[:cut_case[0]])))),
    st.sampled_from(_FRAGMENTS), st.binary(max_size=4),
)


@compiled_only
@settings(max_examples=3000, deadline=None)
@given(st.lists(_NEEDLE_PIECES, max_size=30).map(b"".join))
def test_compiled_needle_scan_is_the_automaton(data: bytes) -> None:
    from shipper.redact import _find

    assert _find(data) == _find_py(data)


@compiled_only
def test_compiled_needle_scan_over_every_byte_pair() -> None:
    from shipper.redact import _find

    data = bytes(b for pair in zip(range(256), range(256)[::-1], strict=True) for b in pair) * 2
    every = bytes(range(256)) + b" API_KEY=x password==@ Pass " + bytes(range(255, -1, -1))
    for probe in (data, every, every[:-1], b"@", b"a", b"", every.upper()):
        assert _find(probe) == _find_py(probe)


@compiled_only
def test_compiled_needle_scan_at_the_ends_and_with_the_rarest_bytes() -> None:
    """Every needle at a read's start and end (where the scan's triple table sees bytes past the
    end), cut short, and beside the punctuation that shares a filter class (the table's 64th)."""
    from shipper.redact import _find

    rare = b"!$|\\^`~#%&?*+<>"
    for needle, *_ in _NEEDLES:
        for probe in (needle, needle.upper(), b"x" + needle, b"=" + needle, needle[:-1], needle[1:],
                      needle + b"~", rare + needle + rare, needle[:2] + rare[:3], rare[::-1] + needle[:3]):
            assert _find(probe) == _find_py(probe), probe


def walk(events: list[bytes], i: int, stop: int, limit: int) -> tuple[int, int]:
    """The largest `k` in `[i, stop]` such that `events[i:k]`, each with one separator, hold at most
    `limit` bytes, and those bytes: event by event."""
    total = 0
    for k in range(i, stop):
        if total + len(events[k]) + 1 > limit:
            return k, total
        total += len(events[k]) + 1
    return max(i, stop), total


@settings(max_examples=500, deadline=None)
@given(st.lists(st.binary(max_size=30), max_size=50), st.integers(0, 60), st.integers(0, 60), st.integers(-5, 400))
def test_a_run_fitted_by_bisection_is_the_walk(events: list[bytes], i: int, stop: int, limit: int) -> None:
    i, stop = min(i, len(events)), min(stop, len(events))
    run = Events.of(events, range(len(events)), len(events))
    assert run.fit(i, stop, limit) == walk(events, i, stop, limit)
    assert run.events() == events and len(run) == len(events)


@compiled_only
@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=20), min_size=1, max_size=30), st.data())
def test_compiled_splice_replaces_the_events_at_the_indices(events: list[bytes], data: st.DataObject) -> None:
    run = Events.of(events, range(len(events)), len(events))
    indices = sorted(data.draw(st.sets(st.integers(0, len(events) - 1))))
    new = [data.draw(st.binary(max_size=20)) for _ in indices]
    buf, bounds = prepare_mod._hotpath.splice(bytearray(run.buf + b"spare"), len(run.buf), run.bounds.tobytes(),
                                              indices, new)
    want = list(events)
    for i, event in zip(indices, new, strict=True):
        want[i] = event
    assert Events(buf, array("q", bounds), run.offs) == Events.of(want, range(len(want)), len(want))
    for length, at in ((len(run.buf), [0, 0]), (len(run.buf) + 1, []), (len(run.buf) - 1, [])):
        with pytest.raises(ValueError):
            prepare_mod._hotpath.splice(run.buf, length, run.bounds.tobytes(), at, [b""] * len(at))


@compiled_only
def test_random_reads_of_generated_blast_output(tmp_path: Path) -> None:
    """Reads of the benchmark's generated BLAST-like log (bench/gen_logs.py: ANSI colour, progress
    bars, secrets, invalid UTF-8, long lines), as the reader cuts them, with the state carried."""
    from bench.gen_logs import write_log

    path = tmp_path / "blast.log"
    write_log(path, lines=20_000, seed=int(time.time()) % 1000)
    reader = LineReader(path, random.Random(3).choice([4096, 65536]), 1 << 20)
    assert reader.open()
    state = CLEAN_STATE
    reads = 0
    while (chunk := reader.read()) is not None:
        if not chunk.count:  # a read that ended no line: the stream prepares nothing for it
            continue
        reads += 1
        compiled, pure = both(chunk, state)
        assert_same(compiled, pure)
        state = pure.state
    assert reads > 10


@compiled_only
@given(st.lists(st.sampled_from([b"\n", b"\n\n", b"x", b"\x00", b"\xff", b"a" * 70]), max_size=40).map(b"".join))
def test_compiled_newline_count_is_bytes_count(data: bytes) -> None:
    assert prepare_mod._hotpath.newlines(data) == data.count(b"\n")
