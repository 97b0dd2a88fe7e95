"""Pure line accounting: what a program wrote against what the artifacts hold (docs/protocol.md section 6).

A line written and in neither the artifacts nor a marker's count is lost; a line stored more often
than written is duplicated; a stored line nobody wrote is invented. All three must be 0.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

MARKER_RE = re.compile(
    # an inexact report's marker (`exact: false`) says "at least N lines": it still counts N
    r"^\[\.\.\. (?:at least )?(?P<lines>\d+) lines (?:omitted|\((?P<bytes>\d+) bytes\) dropped by the shipper) \.\.\.\]$"
)


def marker_lines(line: str) -> int | None:
    """The lines a marker event accounts for, or None when `line` is not a marker."""
    m = MARKER_RE.match(line)
    return int(m.group("lines")) if m else None


@dataclass(frozen=True)
class StreamCount:
    """One stream in one phase: written lines against stored lines."""

    written: int
    stored: int
    lost: int
    duplicated: int
    invented: int
    markers: int
    marker_lines: int
    in_order: bool

    @property
    def clean(self) -> bool:
        return self.lost == self.duplicated == self.invented == self.markers == 0 and self.in_order


def compare_lines(written: Sequence[str], stored_events: Sequence[str]) -> StreamCount:
    """Count written lines missing from / repeated in / foreign to the stored events (markers apart).

    Lines are compared as multisets (BLAST repeats blank lines), and the order is checked as a whole.
    """
    markers = [n for n in map(marker_lines, stored_events) if n is not None]
    stored = [line for line in stored_events if marker_lines(line) is None]
    want = Counter(written)
    got = Counter(stored)
    lost = sum(max(0, n - got[line]) for line, n in want.items())
    duplicated = sum(max(0, n - want[line]) for line, n in got.items() if want[line] > 0)
    invented = sum(n for line, n in got.items() if want[line] == 0)
    return StreamCount(
        written=len(written),
        stored=len(stored),
        lost=lost,
        duplicated=duplicated,
        invented=invented,
        markers=len(markers),
        marker_lines=sum(markers),
        in_order=list(stored) == list(written) or _is_subsequence(stored, written),
    )


def _is_subsequence(part: Sequence[str], whole: Sequence[str]) -> bool:
    it = iter(whole)
    return all(any(x == y for y in it) for x in part)


def split_log(data: bytes) -> list[str]:
    """A log file's lines as the shipper reads them: split at `\\n`, the unterminated last one included."""
    if not data:
        return []
    parts = data.split(b"\n")
    if parts[-1] == b"":
        parts.pop()
    return [p.decode("utf-8", "replace") for p in parts]


def total(counts: Iterable[StreamCount]) -> StreamCount:
    items = list(counts)
    return StreamCount(
        written=sum(c.written for c in items),
        stored=sum(c.stored for c in items),
        lost=sum(c.lost for c in items),
        duplicated=sum(c.duplicated for c in items),
        invented=sum(c.invented for c in items),
        markers=sum(c.markers for c in items),
        marker_lines=sum(c.marker_lines for c in items),
        in_order=all(c.in_order for c in items),
    )
