"""Atomic file writes: a reader (or a crash) sees the old file or the new one, whole, never a part.

The recipe, once for every program: write a temp file in the target's own folder (so the rename
stays on one filesystem), fsync it, rename it over the target (`os.replace`), then fsync the
folder so the new name itself survives a crash. Put-if-absent uses `os.link` instead of the
rename: it fails when the name exists, so two writers cannot both win.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import secrets
from collections.abc import Iterator, Sequence
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


@contextlib.contextmanager
def _removed_on_failure(*temps: str) -> Iterator[None]:
    """Remove the temp files (those still there) if the block fails, then let the failure through."""
    try:
        yield
    except BaseException:
        for tmp in temps:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        raise


def _write_temp(folder: str, prefix: str, mode: int, data: bytes | Sequence[bytes | memoryview],
                fsync: bool) -> str:
    """A new temp file in `folder` holding `data` (bytes, or parts written one after another), with `mode`,
    fsynced if asked; its path. Nothing is left behind when it fails."""
    while True:  # a name left by a crashed process with the same token is all but impossible; step past it
        tmp = os.path.join(folder, f"{prefix}{_TOKEN}-{next(_COUNTER)}.part")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode & 0o700)
            break
        except FileExistsError:
            continue
    with _removed_on_failure(tmp):
        try:
            for part in (data,) if isinstance(data, bytes | bytearray | memoryview) else data:
                view = memoryview(part)
                while view:
                    view = view[os.write(fd, view):]
            if mode & ~0o700:  # bits for others, which the umask may have taken (the owner's it leaves be)
                os.fchmod(fd, mode)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
    return tmp


def write_atomic(path: str | os.PathLike[str], data: bytes | Sequence[bytes | memoryview], *, mode: int = 0o644,
                 overwrite: bool = True, temp_prefix: str = TEMP_PREFIX) -> bool:
    """Write `data` (bytes, or parts written one after another, never joined) to `path` atomically and
    durably; the folder must exist.

    `overwrite=False` writes only when `path` does not exist yet and returns False when it did
    (without a race between writers). Raises OSError; leaves no temp file behind on failure.
    """
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    tmp = _write_temp(folder, temp_prefix, mode, data, fsync=True)
    with _removed_on_failure(tmp):
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
    fsync_dir(folder)
    return True


def _libc_syncfs() -> object | None:
    try:
        return getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None)
    except OSError:  # pragma: no cover - no C library to load
        return None


#: Linux's syncfs(2): everything written to one filesystem made durable in one call (Python's os lacks it).
_SYNCFS = _libc_syncfs()


def sync_filesystem(folder: str) -> bool:
    """Make every file written on `folder`'s filesystem durable (syncfs); False where that cannot be done
    (then fsync each file)."""
    if _SYNCFS is None:
        return False
    fd = os.open(folder, os.O_RDONLY)
    try:
        if _SYNCFS(fd) != 0:  # type: ignore[operator]
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)
    return True


def write_many_atomic(items: list[tuple[str, bytes]], *, mode: int = 0o644, temp_prefix: str = TEMP_PREFIX) -> None:
    """Each (path, data) written as `write_atomic` would, made durable together: every temp file written,
    one syncfs of their filesystem (not one fsync per file), the renames, one fsync per folder. For
    thousands of small files at once (a finalize's chunks); folders must exist. Raises OSError; leaves
    no temp file behind on failure (what was renamed stays, each file whole)."""
    temps: list[tuple[str, str]] = []
    try:
        synced = _SYNCFS is not None
        for path, data in items:
            temps.append((_write_temp(os.path.dirname(path) or ".", temp_prefix, mode, data, not synced), path))
        if temps and synced:
            sync_filesystem(os.path.dirname(temps[0][0]) or ".")
        while temps:
            tmp, path = temps[-1]
            os.replace(tmp, path)
            temps.pop()
    finally:
        for tmp, _ in temps:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    for folder in {os.path.dirname(path) or "." for path, _ in items}:
        fsync_dir(folder)
