"""Per-stream checkpoints in `state/`: atomic, versioned, written only after the aggregator's 2xx.

A checkpoint names the file (dev, inode), the position after the last delivered line, the
generation's stream base, the next `seq`, the bytes shipped (for the stream's budget), and
whether the stream's `eof` batch was acknowledged. Because it only ever describes delivered
data, a kill at any moment loses nothing: a restart re-reads and re-sends what was in flight,
and the aggregator dedupes by (stream, off).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

import orjson

from blastlogs.atomic import write_atomic
from shipper.reader import Cursor

CHECKPOINT_VERSION: Final = 1


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
            shipped=int(raw["shipped"]), eof=bool(raw.get("eof", False)),
        )
    except (KeyError, TypeError, ValueError):
        return None
    if min(cp.pos, cp.base, cp.seq, cp.shipped) < 0:
        return None
    return cp


class Checkpointer:
    """Reads and atomically writes `state/<container>.json`."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir

    def path(self, container: str) -> Path:
        return self.state_dir / f"{container}.json"

    def load(self, container: str) -> Checkpoint | None:
        try:
            data = self.path(container).read_bytes()
        except FileNotFoundError:
            return None
        cp = decode_checkpoint(data)
        return cp if cp is not None and cp.container == container else None

    def save(self, cp: Checkpoint) -> None:
        """Atomically (`write_atomic`): a reader sees the old checkpoint or the new one, whole."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path(cp.container), encode_checkpoint(cp))
