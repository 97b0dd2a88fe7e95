"""Atomic file writes: a reader (or a crash) sees the old file or the new one, whole, never a part.

The recipe, once for every program: write a temp file in the target's own folder (so the rename
stays on one filesystem), fsync it, rename it over the target (`os.replace`), then fsync the
folder so the new name itself survives a crash. Put-if-absent uses `os.link` instead of the
rename: it fails when the name exists, so two writers cannot both win.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
from typing import Final

#: Temp files start with this, so a folder listing can tell them from finished files.
TEMP_PREFIX: Final = ".tmp-"
#: Temp names: this process's random token and a counter (no `tempfile.mkstemp`: its random names and
#: file object cost more than a small file's write; a finalize writes a hundred thousand).
_TOKEN: Final = secrets.token_hex(6)
_COUNTER = itertools.count()


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Make the names in `folder` durable; a no-op where the filesystem cannot fsync a folder."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _create_temp(folder: str, prefix: str, mode: int) -> tuple[int, str]:
    while True:  # a name left by a crashed process with the same token is all but impossible; step past it
        tmp = os.path.join(folder, f"{prefix}{_TOKEN}-{next(_COUNTER)}.part")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode & 0o700), tmp
        except FileExistsError:
            continue


def write_atomic(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o644, overwrite: bool = True,
                 temp_prefix: str = TEMP_PREFIX, sync_dir: bool = True) -> bool:
    """Write `data` to `path` atomically and durably; the folder must exist. Without `sync_dir` the new
    name is durable only once the caller has fsynced the folder (`fsync_dir`: once for many files).

    `overwrite=False` writes only when `path` does not exist yet and returns False when it did
    (without a race between writers). Raises OSError; leaves no temp file behind on failure.
    """
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    fd, tmp = _create_temp(folder, temp_prefix, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if mode & ~0o700:  # bits for others, which the umask may have taken (the owner's it leaves be)
                os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
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
    if sync_dir:
        fsync_dir(folder)
    return True
