"""Atomic file writes: a reader (or a crash) sees the old file or the new one, whole, never a part.

The recipe, once for every program: write a temp file in the target's own folder (so the rename
stays on one filesystem), fsync it, rename it over the target (`os.replace`), then fsync the
folder so the new name itself survives a crash. Put-if-absent uses `os.link` instead of the
rename: it fails when the name exists, so two writers cannot both win.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Final

#: Temp files start with this, so a folder listing can tell them from finished files.
TEMP_PREFIX: Final = ".tmp-"


def fsync_dir(folder: Path) -> None:
    """Make the names in `folder` durable; a no-op where the filesystem cannot fsync a folder."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_atomic(path: Path, data: bytes | Sequence[bytes | memoryview], *, mode: int = 0o644,
                 overwrite: bool = True, temp_prefix: str = TEMP_PREFIX) -> bool:
    """Write `data` (bytes, or parts written one after another, never joined) to `path` atomically and
    durably; the folder must exist.

    `overwrite=False` writes only when `path` does not exist yet and returns False when it did
    (without a race between writers). Raises OSError; leaves no temp file behind on failure.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            for part in (data,) if isinstance(data, bytes | bytearray | memoryview) else data:
                f.write(part)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
    return True
