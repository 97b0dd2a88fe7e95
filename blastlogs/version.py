"""The installed distribution's version, for both programs' `--version`."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Final

DISTRIBUTION: Final = "blast-logs"


def installed_version() -> str:
    """`blast-logs`'s version as installed (pip's metadata); "unknown" when run from a bare tree."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown"
