"""Per-stream checkpoints in `state/`: atomic, versioned, written only after the aggregator's 2xx.

A checkpoint names the file (dev, inode), the position after the last delivered line, the
generation's stream base, the next `seq`, the bytes shipped (for the stream's budget), and
whether the stream's `eof` batch was acknowledged. Because it only ever describes delivered
data, a kill at any moment loses nothing: a restart re-reads and re-sends what was in flight,
and the aggregator dedupes by (stream, off).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

import orjson

from blastlogs.atomic import write_atomic
from shipper.reader import Cursor
from shipper.volumefiles import read_small

CHECKPOINT_VERSION: Final = 1
#: A checkpoint is a few hundred bytes; a larger file in its place is not one.
CHECKPOINT_CAP: Final = 64 * 1024
#: Seconds between checkpoint writes while batches stream (eof and drain write at once): a write
#: costs an fsync, and a restart re-sends at most this much acknowledged data.
CHECKPOINT_INTERVAL: Final = 0.1


@dataclass(frozen=True)
class Checkpoint:
    container: str
    dev: int
    ino: int
    pos: int
    base: int
    seq: int
    shipped: int
    eof: bool = False
    #: `reader.fingerprint` of the bytes before `pos` ("" when unknown): tells a restart whether the
    #: file was rewritten while the shipper was down
    fp: str = ""
    v: int = CHECKPOINT_VERSION

    @property
    def cursor(self) -> Cursor:
        return Cursor(self.dev, self.ino, self.pos, self.base)

    @property
    def off(self) -> int:
        return self.base + self.pos


def encode_checkpoint(cp: Checkpoint) -> bytes:
    return orjson.dumps(asdict(cp))


def decode_checkpoint(data: bytes) -> Checkpoint | None:
    """A checkpoint, or None for anything unreadable or of another version (then we start over)."""
    try:
        raw = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(raw, dict) or raw.get("v") != CHECKPOINT_VERSION:
        return None
    try:
        cp = Checkpoint(
            container=str(raw["container"]), dev=int(raw["dev"]), ino=int(raw["ino"]),
            pos=int(raw["pos"]), base=int(raw["base"]), seq=int(raw["seq"]),
            shipped=int(raw["shipped"]), eof=bool(raw.get("eof", False)), fp=str(raw.get("fp", "")),
        )
    except (KeyError, TypeError, ValueError):
        return None
    if min(cp.pos, cp.base, cp.seq, cp.shipped) < 0:
        return None
    return cp


class Checkpointer:
    """Reads and atomically writes `state/<container>.json`; `paced()` writes a stream's soon."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir

    def path(self, container: str) -> Path:
        return self.state_dir / f"{container}.json"

    def load(self, container: str) -> Checkpoint | None:
        """The stream's checkpoint; None when absent or not a small regular file (`state/` is in the
        shared volume: a FIFO or a link there must not hang or feed the shipper)."""
        data = read_small(self.path(container), CHECKPOINT_CAP)
        if data is None:
            return None
        cp = decode_checkpoint(data)
        return cp if cp is not None and cp.container == container else None

    def save(self, cp: Checkpoint) -> None:
        """Atomically (`write_atomic`): a reader sees the old checkpoint or the new one, whole."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path(cp.container), encode_checkpoint(cp))

    def paced(self, interval: float = CHECKPOINT_INTERVAL,
              stamp: Callable[[Checkpoint], Checkpoint] | None = None) -> PacedCheckpoints:
        """A writer for one stream's checkpoints that keeps their fsyncs to a few per second;
        `stamp` completes each just before it is written, in the writer's thread."""
        return PacedCheckpoints(self, interval, stamp)


class PacedCheckpoints:
    """Has each acknowledged checkpoint written soon, without holding up the next send.

    One writer task at a time, always writing the newest checkpoint it was given, so the file
    never goes back; it may lag the acknowledgements by up to `interval`, which a restart only
    re-sends. Pacing keeps the fsyncs (and thread hand-offs) to a few per second instead of one
    per batch; `hurry()` (at eof and drain) ends the pacing.
    """

    def __init__(self, checkpointer: Checkpointer, interval: float,
                 stamp: Callable[[Checkpoint], Checkpoint] | None = None) -> None:
        self.checkpointer = checkpointer
        self.interval = interval
        self.stamp = stamp
        #: the newest checkpoint on disk, and how many writes it took to get there
        self.written: Checkpoint | None = None
        self.writes = 0
        #: the writer waits out the interval now
        self.pacing = False
        self._next: Checkpoint | None = None
        self._writer: asyncio.Task[None] | None = None
        self._last = -math.inf  # time.monotonic() when the last write began
        self._hurry = asyncio.Event()

    def submit(self, cp: Checkpoint) -> None:
        """Have `cp` written soon. A failed earlier write raises here (it fails the stream)."""
        self._next = cp
        writer = self._writer
        if writer is None or writer.done():
            if writer is not None:
                writer.result()
            self._writer = asyncio.create_task(self._write(), name=f"checkpoint {cp.container}")

    def hurry(self) -> None:
        """From now on write without pacing."""
        self._hurry.set()

    async def flush(self) -> None:
        """Hurry, and return once the newest checkpoint given is on disk."""
        self._hurry.set()
        if self._writer is not None:
            await self._writer

    async def close(self) -> None:
        """Stop writing; a write under way in its thread still completes, whole."""
        if self._writer is not None and not self._writer.done():
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer

    def _save(self, cp: Checkpoint) -> None:
        self.checkpointer.save(cp if self.stamp is None else self.stamp(cp))

    async def _write(self) -> None:
        while self.written is not self._next and self._next is not None:
            wait = self._last + self.interval - time.monotonic()
            if wait > 0 and not self._hurry.is_set():
                self.pacing = True
                try:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._hurry.wait(), wait)
                finally:
                    self.pacing = False
            cp = self._next
            self._last = time.monotonic()
            await asyncio.to_thread(self._save, cp)
            self.written = cp
            self.writes += 1
