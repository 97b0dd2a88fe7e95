"""Opening files in the shared volume, which untrusted job containers write (docs/security.md,
"An untrusted volume").

Every log, exit and checkpoint file is opened here, and only regular files of the volume's own
filesystem are ever read:

- `O_NOFOLLOW`: a symbolic link as the last component fails (ELOOP), so `logs/tok.log ->
  /var/run/secrets/...` or `-> /proc/self/environ` is never opened;
- `O_NONBLOCK`: opening a FIFO does not wait for a writer (and a read from one would not wait);
  `O_NOCTTY`: opening a terminal device does not make it ours; `O_CLOEXEC`: no child inherits it;
- `fstat` on the opened descriptor (not the path, which can change after the check): anything but
  a regular file (FIFO, device, socket, directory) is closed unread, and so is a file on another
  filesystem than the volume's (a symlinked `logs/` folder pointing elsewhere, or a bind mount).

After these checks a read is a read of a regular file: it never waits for a writer, so the reading
loop may call it directly; its length is bounded by the caller (`read_size`, `read_small`'s cap).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Final

OPEN_FLAGS: Final = (os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
                     | getattr(os, "O_NOCTTY", 0))


class NotRegularFile(OSError):
    """The path names something the shipper must not read: a symlink, FIFO, device, socket,
    directory, or a file outside the volume's filesystem."""


def kind_of(mode: int) -> str:
    """A file type in words, for the refusal's message."""
    for test, word in ((stat.S_ISLNK, "symbolic link"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"), (stat.S_ISDIR, "directory")):
        if test(mode):
            return word
    return "not a regular file"


def open_regular(path: Path, dev: int | None = None) -> tuple[int, os.stat_result]:
    """An fd and its `fstat` for the regular file at `path` (on device `dev` when given).

    Raises FileNotFoundError when absent, NotRegularFile for anything that must not be read, and
    other OSErrors as they come (EACCES, ENXIO for a socket, ...).
    """
    try:
        fd = os.open(path, OPEN_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotRegularFile(errno.ELOOP, "a symbolic link", str(path)) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(errno.EINVAL, kind_of(st.st_mode), str(path))
        if dev is not None and st.st_dev != dev:
            raise NotRegularFile(errno.EXDEV, "on another filesystem than the volume", str(path))
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def read_small(path: Path, cap: int, dev: int | None = None) -> bytes | None:
    """The whole of a small regular file; None when absent, refused, unreadable or over `cap` bytes
    (so `logs/x.exit` linked or grown to gigabytes costs at most `cap` + 1 bytes of memory)."""
    try:
        fd, _ = open_regular(path, dev)
    except OSError:
        return None
    try:
        data = os.read(fd, cap + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    return data if len(data) <= cap else None


def volume_device(logs_dir: Path) -> int | None:
    """The device the files of `logs_dir` must be on, or None when it cannot be looked at yet.

    `lstat`: for the folder itself, its filesystem (the volume's, or whatever an operator mounted
    there); for a symlink a job put in its place, the volume's, so files it leads to elsewhere
    are refused."""
    try:
        return os.lstat(logs_dir).st_dev
    except OSError:
        return None
