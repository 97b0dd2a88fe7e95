"""Unknown `BLAST_LOGS_*` environment variables: a misspelt setting is otherwise ignored in
silence (the default applies), so each program warns at startup, naming the closest known name."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Final

PREFIX: Final = "BLAST_LOGS_"
#: How alike (difflib's ratio) a known name must be to be suggested.
CLOSE_ENOUGH: Final = 0.6


def unknown_settings(environ: Mapping[str, str], known: Iterable[str], program: str) -> list[str]:
    """One line per `BLAST_LOGS_*` variable in `environ` that `program` does not read, naming the
    closest of `known` when one is close; sorted by variable name. Never repeats a value."""
    names = sorted(set(known))
    lines = []
    for name in sorted(n for n in environ if n.startswith(PREFIX) and n not in names):
        close = difflib.get_close_matches(name, names, n=1, cutoff=CLOSE_ENOUGH)
        hint = f"; did you mean {close[0]}?" if close else " (ignored)"
        lines.append(f"{name} is not a setting of {program}{hint}")
    return lines
