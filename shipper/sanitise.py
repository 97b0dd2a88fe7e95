"""Turn one raw log line into the text a reader should see (docs/protocol.md section 4 line cap).

Pure functions plus `Sanitiser`, the per-stream object the stream pipeline calls. Order per line:
decode (invalid UTF-8 becomes U+FFFD), render what a terminal would show (escape sequences,
carriage returns, backspaces), drop the remaining control characters except tab, redact secrets,
then cap. Redaction runs after rendering so an escape sequence cannot split a secret, and before the
cap so a cut cannot leave a secret's prefix unrecognisable.

Most lines need none of this: the fast path is a couple of C-level calls per line, and `lines()`
handles a whole batch with one decode, one control check and one redaction pre-check.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections import Counter
from functools import partial
from itertools import compress
from typing import Final

from blastlogs.protocol import MAX_LINE_CHARS, cap_line
from shipper.reader import line_ends
from shipper.redact import CLEAN_STATE, Lines, Redactor, RedactorState

# Escape sequences (ECMA-48), 7-bit and 8-bit forms. An unterminated string sequence (OSC, DCS,
# ...) swallows the rest of the line, as a terminal would.
_CSI: Final = r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"
_STRING_SEQ: Final = r"(?:\x1b[\]P^_X]|[\x9d\x90\x9e\x9f\x98])[^\x07\x1b\x9c\n]*(?:\x07|\x1b\\|\x9c)?"
_OTHER_ESC: Final = r"\x1b[ -/]*[0-~]"
#: C0 controls except tab (newline included, for text that still holds several lines), DEL, C1.
_CONTROL_CHARS: Final = r"[\x00-\x08\x0a-\x1f\x7f-\x9f]"

# Each pattern opens with a lookahead of its possible first characters: `re` finds no first-character
# set for an alternation of groups by itself, and would otherwise try every position (3x slower).
_STRIP_RE: Final = re.compile(f"(?={_CONTROL_CHARS})(?:{_CSI}|{_STRING_SEQ}|{_OTHER_ESC}|{_CONTROL_CHARS})")
#: Anything `strip_controls` would change: the slow-path test for one line.
_NEEDS_WORK_RE: Final = re.compile(_CONTROL_CHARS)
#: Lines whose rendering moves the cursor: they need the terminal model, not plain stripping.
_CURSOR_RE: Final = re.compile(r"(?=[\r\x08\x1b\x9b])(?:[\r\x08]|(?:\x1b\[|\x9b)[0-9;]*[KGCD])")

_TERMINAL_TOKEN_RE: Final = re.compile(
    r"(?P<text>[^\x00-\x08\x0a-\x1f\x7f-\x9f]+)"
    r"|(?P<cr>\r)"
    r"|(?P<bs>\x08)"
    r"|(?:\x1b\[|\x9b)(?P<arg>[0-9]*)(?P<move>[KGCD])"
    f"|{_CSI}|{_STRING_SEQ}|{_OTHER_ESC}|{_CONTROL_CHARS}"
)


def decode(raw: bytes) -> str:
    """UTF-8 with every invalid sequence replaced by U+FFFD: a log line is never rejected."""
    return raw.decode("utf-8", "replace")


def strip_controls(text: str) -> str:
    """Remove escape sequences (CSI, OSC, DCS, other ESC) and control characters except tab."""
    return _STRIP_RE.sub("", text)


def apply_carriage_returns(text: str) -> str:
    """What a terminal shows last for `text`: "10%\\r50%\\r100%" -> "100%", "abcdef\\rXY" -> "XYcdef".

    Models a single terminal row: carriage return goes to column 0, backspace one column left,
    later text overwrites; erase-in-line (ESC[K, 0/1/2) and cursor column moves (ESC[nG, nC, nD)
    are honoured. Other escapes and controls take no space and disappear. A trailing carriage
    return (CRLF files) only moves the cursor, so the line stays. Every character is one column;
    erased or skipped cells show as spaces, except at the end of the row where nothing is shown.
    """
    blank = "\x00"  # an erased cell: cannot occur in text tokens
    row = ""
    col = 0
    for m in _TERMINAL_TOKEN_RE.finditer(text):
        kind = m.lastgroup
        if kind == "text":
            chunk = m.group()
            if col > len(row):
                row += blank * (col - len(row))
            row = row[:col] + chunk + row[col + len(chunk) :]
            col += len(chunk)
        elif kind == "cr":
            col = 0
        elif kind == "bs":
            col = max(col - 1, 0)
        elif kind == "move":
            arg = m.group("arg")
            final = m.group("move")
            if final == "K":
                if arg in ("", "0"):
                    row = row[:col]
                elif arg == "1":
                    row = blank * min(col + 1, len(row)) + row[col + 1 :]
                elif arg == "2":
                    row = ""
            elif final == "G":
                col = max(int(arg or "1") - 1, 0)
            elif final == "C":
                col += max(int(arg or "1"), 1)
            else:
                col = max(col - max(int(arg or "1"), 1), 0)
    return row.rstrip(blank).replace(blank, " ")


def render(text: str) -> str:
    """`text` without escapes and controls (tab kept), rendered like a terminal when it moves the cursor."""
    if _CURSOR_RE.search(text):
        return apply_carriage_returns(text)
    return strip_controls(text)


def clean(text: str) -> str:
    """`render` with the fast path: printable text (or text whose only control is tab) is returned as is."""
    if text.isprintable() or _NEEDS_WORK_RE.search(text) is None:
        return text
    return render(text)


class Sanitiser:
    """One stream's line sanitiser: holds the redactor's PEM-block state and the counters."""

    def __init__(self, *, max_chars: int = MAX_LINE_CHARS, redact: bool = True) -> None:
        self.max_chars = max_chars
        self._redactor: Redactor | None = Redactor() if redact else None
        self.redactions: Counter[str] = self._redactor.counts if self._redactor else Counter()
        self.truncated = 0

    @property
    def state(self) -> RedactorState:
        """The redactor's state across lines (always clean when redaction is off)."""
        return self._redactor.state if self._redactor is not None else CLEAN_STATE

    @state.setter
    def state(self, value: RedactorState) -> None:
        if self._redactor is not None:
            self._redactor.state = value

    def line(self, raw: bytes, extra_chars: int = 0) -> str:
        """One line without its newline; `extra_chars` are characters the reader skipped (counted as cut)."""
        text = raw.decode("utf-8", "replace")
        if not text.isprintable() and _NEEDS_WORK_RE.search(text) is not None:
            text = render(text)
        if self._redactor is not None:
            text = self._redactor.redact(text)
        if len(text) + extra_chars > self.max_chars:
            text = cap_line(text, self.max_chars, extra_chars)
            self.truncated += 1
        return text

    def lines(self, raws: list[bytes], joined: bytes | None = None, ends: list[int] | None = None) -> list[str]:
        """The same as `[self.line(r) for r in raws]`, in a few passes over the joined batch.

        A reader that split its buffer on newlines may pass `joined` (`b"\\n".join(raws)`, none of
        them holding a newline) and `ends` (`line_ends(raws)`), which saves making them again.
        """
        if not raws:
            return []
        if joined is None:
            joined = b"\n".join(raws)
            if joined.count(b"\n") != len(raws) - 1:  # a raw line holding "\n": not a reader's line
                return [self.line(r) for r in raws]
        return self.joined_lines(joined, ends)

    def joined_lines(self, joined_raw: bytes, ends: list[int] | None = None) -> list[str]:
        """`lines` of `joined_raw.split(b"\\n")`, without making that list: `ends` (their
        `line_ends`) is all it needs of the lines, and is made here only if some line needs work."""
        texts = joined_raw.decode("utf-8", "replace").split("\n")
        rendered: list[int] = []
        controls = control_positions(joined_raw)
        if controls:
            if ends is None:
                ends = line_ends(joined_raw.split(b"\n"))
            rendered = sorted(set(map(partial(bisect_right, ends), controls)))
            for i in rendered:
                texts[i] = render(texts[i])
        if self._redactor is not None:
            self._redactor.redact_batch(texts, joined_raw, ends, rendered)
        limit = self.max_chars
        if max(map(len, texts)) > limit:
            self._cap(texts, list(compress(range(len(texts)), map(limit.__lt__, map(len, texts)))))
        return texts

    def _cap(self, texts: Lines, over: list[int]) -> None:
        """Cut the lines `over` (longer than the cap) to it, and count them."""
        for i in over:
            texts[i] = cap_line(texts[i], self.max_chars)
        self.truncated += len(over)

    def needle_hits(self, joined_raw: bytes) -> tuple[list[int], list[int]]:
        """Where the redactor's scan of a read's joined lines found our needles and rule keywords
        (none when redaction is off): for `some_lines`."""
        return self._redactor.hits(joined_raw) if self._redactor is not None else ([], [])

    def some_lines(self, raws: dict[int, bytes], controls: list[int], own: set[int],
                   candidates: set[int], *, rendered: dict[int, bytes] | None = None) -> dict[int, str] | None:
        """Some lines of a read (by index), sanitised exactly as `joined_lines` sanitises them in
        the whole read, given what it finds there: the lines holding control characters (`controls`,
        in order), and `own`/`candidates` from `needle_hits`. `rendered`: lines of `controls` not in
        `raws`, already rendered (UTF-8, within the cap), which the redaction pre-check sees with
        the others; they are returned only where redaction changed them. None, with nothing
        counted, when the redactor's state must see every line of the read in order (a PEM block
        or env entry begins): use `joined_lines` then."""
        texts = {i: raw.decode("utf-8", "replace") for i, raw in raws.items()}
        for i in controls:
            if i in texts:
                texts[i] = render(texts[i])
        done = {i: text.decode() for i, text in rendered.items()} if rendered else {}
        texts.update(done)
        if self._redactor is not None and not self._redactor.redact_found(texts, own, candidates, controls):
            return None
        for i, text in done.items():
            if texts[i] is text:  # left as it was
                del texts[i]
        self._cap(texts, [i for i, text in texts.items() if len(text) > self.max_chars])
        return texts


#: Maps C0 controls except tab and newline, and DEL, to 0; every other byte to 1.
_C0_MAP: Final = bytes(0 if b < 0x09 or 0x0B <= b < 0x20 or b == 0x7F else 1 for b in range(256))


def control_positions(data: bytes) -> list[int]:
    """Offsets in UTF-8 `data` of control characters other than tab and newline (C0, DEL, C1).

    One `translate` and a memchr per hit; for C1 controls (U+0080-U+009F), a memchr per \\xc2
    lead byte and a look at the byte after it. Exactly the characters `_NEEDS_WORK_RE` finds once decoded.
    """
    mapped = data.translate(_C0_MAP)
    found: list[int] = []
    pos = mapped.find(0)
    while pos >= 0:
        found.append(pos)
        pos = mapped.find(0, pos + 1)
    last = len(data) - 1  # a C1 control is two bytes: its lead cannot be the last byte
    pos = data.find(b"\xc2", 0, last)
    while pos >= 0:
        if 0x80 <= data[pos + 1] <= 0x9F:
            found.append(pos)
        pos = data.find(b"\xc2", pos + 1, last)
    return found
