"""Line sanitising: decoding, terminal rendering, control stripping, the cap, and bulk == per line."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blastlogs.protocol import MAX_LINE_CHARS, cut_marker
from shipper.sanitise import (
    Sanitiser,
    apply_carriage_returns,
    clean,
    control_positions,
    decode,
    render,
    strip_controls,
)

DATA = Path(__file__).resolve().parents[1] / "data"
ORDINARY = sorted((DATA / "ordinary").glob("*.log"))


def corpus_lines() -> list[bytes]:
    lines: list[bytes] = []
    for path in ORDINARY:
        lines.extend(path.read_bytes().split(b"\n"))
    return lines


# --- decoding -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (b"plain ascii", "plain ascii"),
        ("naïve µs ≈ 日本語 ✅".encode(), "naïve µs ≈ 日本語 ✅"),
        (b"bad \xff byte", "bad \ufffd byte"),
        (b"truncated \xe2\x82", "truncated \ufffd"),  # a multi-byte sequence cut at the line end
        (b"overlong \xc0\xaf slash", "overlong \ufffd\ufffd slash"),
        (b"surrogate \xed\xa0\x80 half", "surrogate \ufffd\ufffd\ufffd half"),
    ],
)
def test_decode_replaces_invalid_utf8(raw: bytes, text: str) -> None:
    assert decode(raw) == text
    assert Sanitiser().line(raw) == text


# --- escapes and controls -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("\x1b[1;31mError:\x1b[0m Unknown argument", "Error: Unknown argument"),
        ("\x1b[38;5;196mred\x1b[m \x1b[48;2;0;0;0mblack", "red black"),
        ("\x1b]0;window title\x07after", "after"),  # OSC ended by BEL
        (
            "\x1b]8;;https://ncbi.nlm.nih.gov\x1b\\link\x1b]8;;\x1b\\ text",
            "link text",
        ),  # OSC 8, ST-terminated
        ("\x1bP1$r0m\x1b\\dcs gone", "dcs gone"),
        ("\x1b(Bcharset \x1b=keypad \x1b7saved\x1b8", "charset keypad saved"),
        ("\x9b31m8-bit CSI\x9b0m", "8-bit CSI"),
        ("bell\x07 nul\x00 del\x7f vt\x0b ff\x0c esc\x1b", "bell nul del vt ff esc"),
        ("C1 \x85next \x90x\x9c line", "C1 next  line"),
        ("tab\tstays\tas is", "tab\tstays\tas is"),
        ("unterminated OSC \x1b]0;title runs to the end", "unterminated OSC "),
    ],
)
def test_escapes_and_controls_removed(text: str, shown: str) -> None:
    assert render(text) == shown
    assert clean(text) == shown
    assert Sanitiser().line(text.encode()) == shown


def test_strip_controls_leaves_printable_text() -> None:
    text = "Query  1    CTGTGTCCACCCC\t60 — µs"
    assert strip_controls(text) is text or strip_controls(text) == text


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("10%\r50%\r100%", "100%"),
        ("abcdef\rXY", "XYcdef"),  # a terminal only overwrites what is written again
        ("complete line\r", "complete line"),  # CRLF file: the line stays
        ("complete line\r\r", "complete line"),
        ("\rleading cr", "leading cr"),
        ("Downloading 12.5 MB\r\x1b[KDone", "Done"),  # erase to end of line after CR
        ("Downloading 12.5 MB\r\x1b[0KDone", "Done"),
        ("Downloading\x1b[2K\rok", "ok"),
        ("abcdef\x1b[3D\x1b[1K", "    ef"),  # erase from the start to the cursor, inclusive
        ("|\x08/\x08-\x08\\", "\\"),  # spinner drawn with backspaces
        ("abc\x08\x08X", "aXc"),
        ("col\x1b[10Gmn", "col      mn"),
        ("abcdef\x1b[3Dxy", "abcxyf"),
        ("ab\x1b[2Ccd", "ab  cd"),
        ("\x1b[32m 45%\x1b[0m\r\x1b[32m100%\x1b[0m", "100%"),  # colours take no columns
        ("\x1b[?25l50%\r\x1b[?25h100% done", "100% done"),
    ],
)
def test_terminal_rendering(text: str, shown: str) -> None:
    assert apply_carriage_returns(text) == shown
    assert Sanitiser().line(text.encode()) == shown


def test_real_coloured_output_is_plain_after_sanitising(tmp_path: Path) -> None:
    """grep --color=always writes real SGR and erase-in-line sequences; the text must survive."""
    sample = tmp_path / "hits.tsv"
    sample.write_text("query_1\tNC_001.1\t98.667\nquery_2\tNC_004.1\t92.500\n")
    coloured = subprocess.run(
        ["grep", "--color=always", "NC_00", str(sample)], capture_output=True, check=True
    ).stdout
    assert b"\x1b[" in coloured
    s = Sanitiser()
    assert s.lines(coloured.rstrip(b"\n").split(b"\n")) == sample.read_text().rstrip("\n").split("\n")


def test_real_progress_output_keeps_the_last_state() -> None:
    out = subprocess.run(
        ["sh", "-c", r"printf '  0%%\r 40%%\r100%% core_nt.00.tar.gz\r\n'"], capture_output=True, check=True
    ).stdout
    (line,) = out.rstrip(b"\n").split(b"\n")
    assert Sanitiser().line(line) == "100% core_nt.00.tar.gz"


# --- the ordinary corpus --------------------------------------------------------------------------


def test_ordinary_corpus_is_large_and_real() -> None:
    lines = corpus_lines()
    assert len(lines) >= 500
    joined = b"\n".join(lines)
    for real in (b"BLASTN 2.12.0+", b"Building a new DB", b"Unknown argument", b"Traceback", b"+ blastn"):
        assert real in joined


@pytest.mark.parametrize("path", ORDINARY, ids=lambda p: p.name)
def test_ordinary_output_unchanged_byte_for_byte(path: Path) -> None:
    raws = path.read_bytes().split(b"\n")
    one = Sanitiser()
    assert [one.line(r).encode() for r in raws] == raws
    bulk = Sanitiser()
    assert [t.encode() for t in bulk.lines(raws)] == raws
    assert not one.redactions and not bulk.redactions
    assert one.truncated == bulk.truncated == 0


# --- the cap --------------------------------------------------------------------------------------


def test_long_line_is_cut_to_exactly_the_limit() -> None:
    s = Sanitiser()
    raw = b"A" * 10_000
    out = s.line(raw)
    assert len(out) == MAX_LINE_CHARS == 4000
    kept = out.index(" [... ")
    assert out == "A" * kept + cut_marker(10_000 - kept)
    assert s.truncated == 1


@pytest.mark.parametrize("length", [3999, 4000])
def test_line_at_the_limit_is_kept_whole(length: int) -> None:
    s = Sanitiser()
    assert s.line(b"x" * length) == "x" * length
    assert s.truncated == 0


def test_one_char_over_the_limit_is_cut() -> None:
    s = Sanitiser()
    out = s.line(b"y" * 4001)
    assert len(out) == 4000
    kept = len(out) - len(cut_marker(4001 - out.count("y")))
    assert out == "y" * kept + cut_marker(4001 - kept)


def test_cap_counts_characters_not_bytes() -> None:
    s = Sanitiser()
    assert s.line("é".encode() * 4000) == "é" * 4000
    out = s.line("日".encode() * 4500)
    assert len(out) == 4000 and out.endswith(" chars cut]")


def test_extra_chars_count_as_cut() -> None:
    s = Sanitiser()
    out = s.line(b"z" * 3990, extra_chars=100)
    assert len(out) == 4000
    kept = out.count("z")
    assert out == "z" * kept + cut_marker(3990 + 100 - kept)
    assert s.truncated == 1
    # A short held prefix of a huge line still reports everything that was left out.
    out = s.line(b"prefix", extra_chars=1_000_000)
    assert out == "prefix" + cut_marker(1_000_000)


def test_custom_limit_and_cap_after_rendering() -> None:
    s = Sanitiser(max_chars=50)
    # 200 raw characters of colour codes render to 30 visible ones: under the limit, not cut.
    raw = ("\x1b[31m" + "abc" + "\x1b[0m") * 10
    assert s.line(raw.encode()) == "abc" * 10
    out = s.line(b"q" * 100)
    assert len(out) == 50 and out.startswith("q" * 20)


def test_secret_beyond_the_cut_is_redacted_before_cutting() -> None:
    s = Sanitiser()
    raw = b"x" * 3980 + b" password=hunter2hunter2hunter2"
    out = s.line(raw)
    assert "hunter2" not in out
    assert len(out) == 4000


def test_redaction_can_be_turned_off() -> None:
    s = Sanitiser(redact=False)
    assert s.line(b"password=hunter2") == "password=hunter2"
    assert s.lines([b"password=hunter2", b"\x1b[1mbold\x1b[0m"]) == ["password=hunter2", "bold"]
    assert not s.redactions


def test_redaction_sees_text_after_rendering() -> None:
    s = Sanitiser()
    assert s.line(b"pass\x1b[0mword=\x1b[1mhunter2\x1b[0m") == "password=[REDACTED:password]"
    assert s.lines([b"to\x1b[1mken=abc123def456"]) == ["token=[REDACTED:token]"]
    assert s.redactions == {"password": 1, "token": 1}


# --- bulk == per line -----------------------------------------------------------------------------

_FRAGMENTS = [
    b"Query  1    CTGTGTCCACCCC  60",
    b"query_1\tNC_001.1\t98.667",
    b"\x1b[1;31m",
    b"\x1b[0m",
    b"\x1b]0;t\x07",
    b"\x1b[K",
    b"\r",
    b"\x08",
    b"\x00",
    b"\x85",
    b"\xc2\x85",
    b"\xff",
    b"\xe2\x82",
    "µs ≈ 日本".encode(),
    b" ",
    b"=",
    b": ",
    b"password=hunter2",
    b"token: abc123def456",
    b'"api_key": "k3y-value"',
    b"Authorization: Bearer abcdefghijklmnop1234",
    b"https://u:p4ss@host/x",
    b"?sv=2023&sig=abc%3D&se=1",
    b"AccountKey=Zm9vYmFy==;",
    b"AKIAIOSFODNN7EXAMPLE",
    b"ghp_abcdefghijklmnopqrstuvwxyz0123456789",
    b"-----BEGIN PRIVATE KEY-----",
    b"-----END PRIVATE KEY-----",
    b"MIIEvQIBADANBgkqhkiG9w0BAQEFAASC",
    b"tokenizer",
    b"@",
    b"x" * 300,
]

line_strategy = st.lists(st.sampled_from(_FRAGMENTS), max_size=8).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(line_strategy, max_size=40),
    st.lists(st.integers(min_value=1, max_value=15), max_size=6),
    st.sampled_from([4000, 120, 60]),
)
def test_lines_equals_line_by_line(raws: list[bytes], cuts: list[int], limit: int) -> None:
    one = Sanitiser(max_chars=limit)
    expected = [one.line(r) for r in raws]
    bulk = Sanitiser(max_chars=limit)
    got: list[str] = []
    rest = raws
    for n in cuts:  # several calls in a row: the PEM state carries over between batches
        got += bulk.lines(rest[:n])
        rest = rest[n:]
    got += bulk.lines(rest)
    assert got == expected
    assert bulk.redactions == one.redactions
    assert bulk.truncated == one.truncated
    for text in got:
        assert "\n" not in text and "\r" not in text and "\x1b" not in text
        assert len(text) <= limit


def test_lines_of_an_empty_batch_and_of_a_raw_holding_a_newline() -> None:
    s = Sanitiser()
    assert s.lines([]) == []
    assert s.lines([b""]) == [""]
    # Not what the reader produces, but it must still equal line() on each element.
    assert s.lines([b"a\nb", b"c"]) == [Sanitiser().line(b"a\nb"), "c"]


def test_counters_accumulate_across_calls() -> None:
    s = Sanitiser()
    s.line(b"password=a1b2c3")
    s.lines([b"password=d4e5f6", b"AKIAIOSFODNN7EXAMPLE", b"y" * 5000])
    s.line(b"z" * 5000)
    assert s.redactions == {"password": 2, "aws_access_key_id": 1}
    assert s.truncated == 2


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64).map(lambda b: b.replace(b"\n", b"")))
def test_control_bytes_found_exactly_where_decoded_text_has_controls(raw: bytes) -> None:
    text = decode(raw)
    assert bool(control_positions(raw)) == (clean(text) != text or any(c in text for c in "\x1b\r\x08"))
    assert Sanitiser(redact=False).lines([raw, raw]) == [Sanitiser(redact=False).line(raw)] * 2


def test_rendered_lines_are_control_free() -> None:
    s = Sanitiser()
    raws = [bytes([b]) + b"x" for b in range(256) if b != 0x0A] + ["\u0085y".encode(), "\u009bz".encode()]
    for text in s.lines(raws):
        assert text.isprintable() or "\t" in text, repr(text)
