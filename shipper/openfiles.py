"""A cap on the log files held open at once: the least recently read is closed first.

A stream whose file was closed keeps its position and the file's identity (dev, inode) and reopens
it by name when it next reads: the same identity resumes where it was, another one is a file
replaced while it was closed (reported, as its unread rest is unknowable; `LineReader`). So a
volume of thousands of files holds at most `cap` of them open, and the shipper's own sockets,
pipes and checkpoint writes keep descriptors to spare under a low `ulimit -n`.
"""

from __future__ import annotations

import resource
from collections import OrderedDict
from typing import TYPE_CHECKING, Final, Protocol

if TYPE_CHECKING:
    from shipper.metrics import ShipperMetrics

#: Of the process's descriptor limit, the share log files may take (the rest: sockets, pipes,
#: checkpoint writes, the metrics server).
LIMIT_SHARE: Final = 4
MIN_CAP: Final = 8


class Closable(Protocol):
    def suspend(self) -> None: ...


def effective_cap(configured: int) -> int:
    """`configured`, but at most a quarter of the soft `RLIMIT_NOFILE` (and at least `MIN_CAP`)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return max(configured, MIN_CAP)
    return max(min(configured, soft // LIMIT_SHARE), MIN_CAP)


class OpenFiles:
    """Readers holding a file open, least recently read first; past `cap`, the first is closed."""

    def __init__(self, cap: int, metrics: ShipperMetrics | None = None) -> None:
        self.cap = cap
        self.metrics = metrics
        self._open: OrderedDict[int, Closable] = OrderedDict()

    def __len__(self) -> int:
        return len(self._open)

    def opened(self, reader: Closable) -> None:
        """`reader` opened its file: close the least recently read others while over the cap."""
        self._open[id(reader)] = reader
        self._open.move_to_end(id(reader))
        while len(self._open) > self.cap:
            _, victim = self._open.popitem(last=False)
            victim.suspend()
            if self.metrics is not None:
                self.metrics.files_closed.inc()
        self._count()

    def used(self, reader: Closable) -> None:
        if id(reader) in self._open:
            self._open.move_to_end(id(reader))

    def closed(self, reader: Closable) -> None:
        if self._open.pop(id(reader), None) is not None:
            self._count()

    def _count(self) -> None:
        if self.metrics is not None:
            self.metrics.open_files.set(len(self._open))
