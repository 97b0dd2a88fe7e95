"""Discovers `logs/*.log`, the containers whose output is in the shared volume, and tells which
streams' files changed since the last look.

Polled (every `poll_interval`) rather than inotify-driven: polling works on every volume driver
and in every container runtime, and a quarter second is well within what a log viewer notices.
One look is one directory listing and one `lstat` per `.log` and `.exit` entry, made in a thread
(`scan` blocks); a stream whose files did not change sleeps instead of polling them itself, so
thousands of idle streams cost one listing per interval, not thousands of wake-ups.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from blastlogs.protocol import valid_k8s_name

LOG_SUFFIX = ".log"
EXIT_SUFFIX = ".exit"

#: What tells a change: the entry's type, inode, size, and modification and change times.
Signature = tuple[int, int, int, int, int]


@dataclass
class Scan:
    #: containers with a valid name whose `.log` is a regular file, sorted
    containers: list[str] = field(default_factory=list)
    #: file names that cannot be a stream, sorted
    bad: list[str] = field(default_factory=list)
    #: container -> the signatures of its `.log` and `.exit` entries (None: absent)
    signatures: dict[str, tuple[Signature | None, Signature | None]] = field(default_factory=dict)


def _signature(entry: os.DirEntry[str]) -> Signature | None:
    try:
        st = entry.stat(follow_symlinks=False)
    except OSError:
        return None
    return stat.S_IFMT(st.st_mode), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def scan(logs_dir: Path) -> Scan:
    """One look at `logs/` (blocking: run it in a thread). A missing folder is an empty one; other
    OSErrors (EMFILE, EACCES) are raised for the caller to log and retry."""
    found = Scan()
    try:
        entries = list(os.scandir(logs_dir))
    except FileNotFoundError:
        return found
    logs: dict[str, Signature | None] = {}
    exits: dict[str, Signature | None] = {}
    for entry in entries:
        name = entry.name
        if name.endswith(LOG_SUFFIX):
            container = name[: -len(LOG_SUFFIX)]
            logs[container] = _signature(entry)
            # The directory entry's own type, with no stat call: a symlink, FIFO, device or
            # socket named `*.log` is never a stream (and the reader checks the opened file again).
            if entry.is_file(follow_symlinks=False):
                if valid_k8s_name(container):
                    found.containers.append(container)
                else:
                    found.bad.append(name)
        elif name.endswith(EXIT_SUFFIX):
            exits[name[: -len(EXIT_SUFFIX)]] = _signature(entry)
    found.containers.sort()
    found.bad.sort()
    found.signatures = {c: (logs.get(c), exits.get(c)) for c in logs.keys() | exits.keys()}
    return found


def discover(logs_dir: Path) -> tuple[list[str], list[str]]:
    """(containers with a valid name, file names that cannot be a stream), both sorted."""
    found = scan(logs_dir)
    return found.containers, found.bad


class Watcher:
    """Remembers the last scan's signatures to name the containers whose files changed since."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[Signature | None, Signature | None]] = {}

    def changed(self, found: Scan) -> list[str]:
        last, now = self._last, found.signatures
        self._last = now
        return [c for c in now.keys() | last.keys() if now.get(c) != last.get(c)]
