"""Give back the volume space of each log's delivered prefix while the container still writes.

logwrap only appends, and the shared `emptyDir` has a size limit: a container that prints more than
the limit in its life would get the pod evicted however fast its lines are shipped. So once a
checkpoint is on disk, the bytes before it are punched out of the file
(`fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)`): the filesystem frees their blocks, the
file keeps its size, so the writer's appends (`O_APPEND`), the reader's position and the stream's
offsets are unchanged; the punched bytes read back as zeros, and nothing reads them again.

Why it is safe:
- only below a checkpoint that is on disk (after each acknowledgement the stream has the reclaimer
  `follow` the newest one `PacedCheckpoints` wrote): a restarted shipper resumes at a checkpoint on
  disk, never before it; the reader of a running one is past every acknowledged line;
- only the file the checkpoint names: opened with `O_NOFOLLOW | O_NONBLOCK` (no symlink, no FIFO
  wait) and punched only when `fstat` gives the checkpoint's device and inode;
- block-aligned, so no partial block is zeroed without being freed; and the first `HEAD_KEEP`
  bytes and the last `TAIL_KEEP` before the checkpoint stay, so checks of a file's identity by its
  first bytes, or by the bytes just before a resume position, still see them.

Where the filesystem cannot punch holes (`EOPNOTSUPP`, `ENOSYS`: some network and FUSE volumes;
tmpfs, ext4, xfs, btrfs and overlayfs upper dirs can), it is said once per stream (log, stderr,
`/healthz` as a risk), counted in `blast_logs_shipper_reclaim_errors{reason="unsupported"}`, and not tried again
for that stream: shipping goes on; the volume is then bounded only by its size limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import logging
import os
import stat
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Final, Protocol

from shipper.metrics import ShipperMetrics

log = logging.getLogger("shipper.reclaim")

FALLOC_FL_KEEP_SIZE: Final = 0x01
FALLOC_FL_PUNCH_HOLE: Final = 0x02
#: Bytes at the start of a file, and just before the checkpoint, that are never punched.
HEAD_KEEP: Final = 64 * 1024
TAIL_KEEP: Final = 64 * 1024
#: The least worth a system call: holes are punched in steps of at least this much.
MIN_STEP: Final = 1024 * 1024
#: errno values meaning "this filesystem (or kernel) cannot punch holes"
UNSUPPORTED: Final = frozenset({errno.EOPNOTSUPP, errno.ENOSYS})


class Position(Protocol):
    """What a checkpoint says about the delivered prefix (`shipper.checkpoints.Checkpoint`)."""

    @property
    def dev(self) -> int: ...
    @property
    def ino(self) -> int: ...
    @property
    def pos(self) -> int: ...
    @property
    def base(self) -> int: ...
    @property
    def off(self) -> int: ...


@cache
def _fallocate() -> Callable[[int, int, int, int], int] | None:
    """libc's `fallocate`, or None where there is none (not Linux). Looked up among the symbols the
    process has loaded (libc's among them), not by `ctypes.util.find_library`, which runs
    `ldconfig -p` in a child process: a vfork'ed child that, until it execs, shows the shipper's
    whole resident set as its own."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(libc, "fallocate", None)
    if fn is None:
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Free the blocks of `length` bytes at `offset`, keeping the file's size. Raises OSError."""
    fn = _fallocate()
    if fn is None:
        raise OSError(errno.ENOSYS, "fallocate is not available here")
    if fn(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def span(punched: int, delivered: int, block: int, step: int = MIN_STEP) -> tuple[int, int] | None:
    """The next range to punch (start, end), given what was punched already and the delivered
    position; None while it would be less than `step`. Pure."""
    block = max(block, 1)
    start = max(punched, -(-HEAD_KEEP // block) * block)
    end = (delivered - TAIL_KEEP) // block * block
    if end - start < max(step, block):
        return None
    return start, end


class Reclaimer:
    """Punches one stream's delivered prefix: `follow` after each acknowledgement (the blocking
    `give_back` runs in a thread, one at a time), `close` when the stream ends."""

    def __init__(self, path: Path, container: str, metrics: ShipperMetrics,
                 on_risk: Callable[[str, str | None], None] | None = None) -> None:
        self.path = path
        self.container = container
        self.metrics = metrics
        self.on_risk = on_risk
        #: the file generation (dev, inode, stream base) punched, and up to where in it
        self.file = (0, 0, -1)
        self.punched = 0
        #: the filesystem cannot punch holes: given up for this stream
        self.unsupported = False
        self._last_error = 0
        self._task: asyncio.Task[None] | None = None
        self._given: Position | None = None

    def follow(self, written: Callable[[], Position | None], acked_off: Callable[[], int],
               interval: float) -> None:
        """An acknowledgement came: give back the space before the newest checkpoint on disk
        (`written()`), and keep at it every `interval` until that checkpoint is the acknowledged
        position (`acked_off()`; the checkpoint writer lags it by up to its pacing interval)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._catch_up(written, acked_off, interval),
                                             name=f"reclaim {self.container}")

    async def _catch_up(self, written: Callable[[], Position | None], acked_off: Callable[[], int],
                        interval: float) -> None:
        while True:
            cp = written()
            if cp is not None and cp is not self._given:
                self._given = cp
                await asyncio.to_thread(self.give_back, cp)
            if cp is not None and cp.off >= acked_off():
                return
            await asyncio.sleep(interval)

    async def close(self) -> None:
        """Stop following; a punch under way in its thread still completes."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def give_back(self, cp: Position) -> None:
        """`cp` is on disk: give back what lies before it (blocking: call in a thread)."""
        if self.unsupported:
            return
        if (cp.dev, cp.ino, cp.base) != self.file:  # replaced or truncated: a new generation
            self.file, self.punched = (cp.dev, cp.ino, cp.base), 0
        try:
            self._punch(cp)
        except OSError as exc:
            self._failed(exc)

    def _punch(self, cp: Position) -> None:
        if span(self.punched, cp.pos, 1) is None:
            return  # not even worth opening the file
        fd = os.open(self.path, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != self.file[:2]:
                return  # replaced: the old file's space goes once the reader lets go of it
            todo = span(self.punched, cp.pos, st.st_blksize or 4096)
            if todo is None:
                return
            start, end = todo
            punch_hole(fd, start, end - start)
        finally:
            os.close(fd)
        self.punched = end
        self.metrics.reclaimed_bytes.labels(container=self.container).inc(end - start)

    def _failed(self, exc: OSError) -> None:
        unsupported = exc.errno in UNSUPPORTED
        reason = "unsupported" if unsupported else errno.errorcode.get(exc.errno or 0, "error")
        self.metrics.reclaim_errors.labels(reason=reason).inc()
        if unsupported:
            self.unsupported = True
            text = (f"cannot give back delivered log space in {self.path.parent} ({reason}: the "
                    "filesystem cannot punch holes); the volume is bounded only by its size limit")
            log.error("cannot reclaim delivered log space; shipping goes on",
                      extra={"file": str(self.path), "error": str(exc)})
            print(f"blast-log-shipper run: {text}", file=sys.stderr, flush=True)
            if self.on_risk is not None:
                self.on_risk("reclaim", text)
        elif exc.errno != errno.ENOENT and exc.errno != self._last_error:
            # said again only when the error changes; a deleted file has nothing to give back
            log.warning("cannot reclaim delivered log space; will try again",
                        extra={"file": str(self.path), "error": str(exc)})
        self._last_error = exc.errno or 0
