"""The installed distribution's version, for both programs' `--version`."""

from __future__ import annotations

from typing import Final

DISTRIBUTION: Final = "blast-logs"


def installed_version() -> str:
    """`blast-logs`'s version as installed (pip's metadata); "unknown" when run from a bare tree."""
    # imported here: importlib.metadata costs every start about 20 ms of CPU for a flag rarely given
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown"
