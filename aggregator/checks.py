"""The checks a batch's values must pass, shared by the wire parser (`ingest`) and the staging decoder.

orjson gives plain dict, list, int, float and str, never subclasses, so types are compared exactly
(a bool is not an integer here).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

#: One event as staged and merged: (off, ts, line).
Event = tuple[int, float, str]


def is_int(x: object) -> bool:
    """An integer that is not a bool."""
    return isinstance(x, int) and not isinstance(x, bool)


def is_nonneg_int(x: object) -> bool:
    return is_int(x) and x >= 0  # type: ignore[operator]


def valid_columns(offs: Sequence[Any], tss: Sequence[Any], lines: Sequence[Any]) -> bool:
    """Whole (non-empty) event columns at once, in C where possible: every `off` a non-negative int,
    every `ts` a finite int or float, every `line` a str."""
    return (set(map(type, offs)) <= {int} and min(offs) >= 0 and set(map(type, tss)) <= {int, float}
            and all(map(math.isfinite, tss)) and set(map(type, lines)) <= {str})


def events_of_columns(offs: Sequence[int], tss: Sequence[float], lines: Sequence[str]) -> tuple[Event, ...]:
    """(off, ts, line) events from checked columns, `ts` as float."""
    return tuple(zip(offs, map(float, tss), lines, strict=True))
