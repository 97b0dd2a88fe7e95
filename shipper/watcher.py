"""Discovers `logs/*.log`: the containers whose output is in the shared volume.

Polled (every `poll_interval`) rather than inotify-driven: polling works on every volume driver
and in every container runtime, and a quarter second is well within what a log viewer notices.
"""

from __future__ import annotations

import os
from pathlib import Path

from blastlogs.protocol import valid_k8s_name

LOG_SUFFIX = ".log"


def discover(logs_dir: Path) -> tuple[list[str], list[str]]:
    """(containers with a valid name, file names that cannot be a stream), both sorted."""
    good: list[str] = []
    bad: list[str] = []
    try:
        entries = list(os.scandir(logs_dir))
    except FileNotFoundError:
        return good, bad
    for entry in entries:
        # The directory entry's own type, with no stat call: a symlink, FIFO, device or socket
        # named `*.log` is never a stream (and the reader checks the opened file again).
        if not entry.name.endswith(LOG_SUFFIX) or not entry.is_file(follow_symlinks=False):
            continue
        container = entry.name[: -len(LOG_SUFFIX)]
        (good if valid_k8s_name(container) else bad).append(container if valid_k8s_name(container)
                                                             else entry.name)
    return sorted(good), sorted(bad)
