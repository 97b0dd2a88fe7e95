"""Bounded-memory line reader with stream offsets across file generations.

Memory is bounded in bytes, not lines: a read takes at most `read_size` bytes, and of a line that
has no newline yet at most `prefix_bytes` are held; the rest of an over-long line is skipped and
only its characters counted (UTF-8 bytes that are not continuation bytes), so the sanitiser can
report them as cut.

Offsets: `off` of a line is the bytes consumed from the container's log before it, across every
generation of the file. When the file is replaced (new inode) the old one is read to its end
first; when it is truncated (size below our position) the count goes on. Either way the new
generation starts at `old base + old position + bytes lost`, so offsets never repeat.

Truncation the size cannot show (truncated and written past our position, or rewritten to the same
size) is told by the file's content: the last `FP_BYTES` bytes before the position are kept, and
after every read, and at every look at the end, the file must still hold them there (a `pread`).
A read they no longer match is thrown away unused (it may be the new content, which would start
mid-line) and the file is read again from its start as a new generation. What the old generation
held past our position is then unknowable: the change is reported not `exact` (at least one line;
as bytes, only what an `fstat` proved was there while the content still matched). A checkpoint
carries the fingerprint (a hash) of the same bytes, so a restart tells a file truncated, rewritten
or replaced while the shipper was down. Limits: a rewrite that puts back the very same bytes
before our position, or a truncation to at or past it followed by writes, looks like an append.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from itertools import accumulate
from pathlib import Path
from typing import TYPE_CHECKING, Final

from shipper.volumefiles import open_regular

try:  # one memchr per line (shipper/_hotpath.c); bytes.count looks at every byte
    from shipper._hotpath import newlines as _newlines
except ImportError:  # pragma: no cover - built without a C compiler
    def _newlines(data: bytes) -> int:
        return data.count(b"\n")

if TYPE_CHECKING:
    from shipper.openfiles import OpenFiles

_CONTINUATION: Final = bytes(range(0x80, 0xC0))
_PLUS_ONE: Final = (1).__add__
#: Bytes before the read position that must stay the same for the file to count as appended to.
FP_BYTES: Final = 256


def fingerprint(data: bytes) -> str:
    """A short hash of the bytes before a position, for a checkpoint (the bytes themselves may be
    secrets the sanitiser has not seen)."""
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def fingerprint_at(path: Path, dev: int, ino: int, pos: int, volume_dev: int | None = None) -> str:
    """The fingerprint of the `FP_BYTES` before `pos` in the file `(dev, ino)` at `path`; "" when
    the path names another file now, or a shorter one (blocking: for a checkpoint writer's thread)."""
    try:
        fd, st = open_regular(path, volume_dev)
    except OSError:
        return ""
    try:
        if (st.st_dev, st.st_ino) != (dev, ino) or st.st_size < pos:
            return ""
        n = min(FP_BYTES, pos)
        data = os.pread(fd, n, pos - n)
        return fingerprint(data) if len(data) == n else ""
    except OSError:
        return ""
    finally:
        os.close(fd)


def line_ends(raws: Sequence[bytes]) -> list[int]:
    """For lines joined with b"\\n": the offset just past each line's newline, for `bisect_right`."""
    return list(accumulate(map(_PLUS_ONE, map(len, raws))))


def count_chars(data: bytes) -> int:
    """UTF-8 characters in `data`: every byte that is not a continuation byte starts one."""
    return len(data.translate(None, _CONTINUATION))


def char_boundary(data: bytes, limit: int) -> int:
    """The largest cut <= limit that does not split a UTF-8 sequence (invalid input: at most 3 back)."""
    cut = min(limit, len(data))
    floor = max(cut - 3, 0)
    while cut > floor and cut < len(data) and 0x80 <= data[cut] < 0xC0:
        cut -= 1
    return cut


@dataclass(frozen=True)
class Cursor:
    """Where to resume: a file identity, the byte position in it, and its generation's stream base."""

    dev: int
    ino: int
    pos: int
    base: int

    @property
    def off(self) -> int:
        return self.base + self.pos


@dataclass
class Chunk:
    """Complete lines from one read: where they start, their bytes, and skipped characters.

    A plain read keeps its lines as one piece (`joined`); the list of lines and their offsets are
    made only when asked for, so a chunk handed whole to a sanitising worker costs the reader one
    search for the last newline and one count, not a Python object per line.
    """

    #: stream offset of the first line
    first: int
    #: number of lines
    count: int
    #: the stream offset just after the last line (where the next line starts)
    end: int
    ts: float
    cursor: Cursor
    #: `b"\n".join(raws)`, when the read had it in one piece (no skipped characters)
    joined: bytes | None = None
    #: index of a line -> characters skipped after its held prefix
    extras: dict[int, int] = field(default_factory=dict)
    #: the lines, when they are not one piece (`joined` is None)
    pieces: list[bytes] | None = None
    #: their stream offsets, likewise
    piece_offs: list[int] | None = None
    #: `ends`, when the chunk was made from them (a sanitising worker gets them with the bytes)
    given_ends: list[int] | None = None

    def __len__(self) -> int:
        return self.count

    @cached_property
    def raws(self) -> list[bytes]:
        if self.pieces is not None:
            return self.pieces
        return self.joined.split(b"\n") if self.joined is not None else []

    @cached_property
    def ends(self) -> list[int]:
        """For each line, the offset just past its newline, counted from the first line's start."""
        if self.given_ends is not None:
            return self.given_ends
        # The lines themselves are not kept: only their lengths are needed here.
        return line_ends(self.raws if "raws" in self.__dict__ or self.joined is None else self.joined.split(b"\n"))

    @cached_property
    def offs(self) -> list[int]:
        if self.piece_offs is not None:
            return self.piece_offs
        offs = [self.first]
        offs.extend(map(self.first.__add__, self.ends[:-1]))
        return offs


@dataclass(frozen=True)
class Generation:
    """The file was replaced or truncated: bytes never read are reported as lost; not `exact` when
    how much was lost is unknowable (`lost_bytes` is then a lower bound, and at least a line was)."""

    lost_off: int
    lost_bytes: int
    cursor: Cursor
    reason: str
    exact: bool = True


@dataclass
class LineReader:
    path: Path
    read_size: int
    prefix_bytes: int
    resume: Cursor | None = None
    #: the checkpoint's fingerprint of the bytes before `resume` ("" for none)
    resume_fp: str = ""
    #: the volume's device: a file on any other filesystem is refused (None: not checked)
    volume_dev: int | None = None
    #: the cap on open files this reader counts against (None: no cap)
    files: OpenFiles | None = None
    fd: int = -1
    #: the file was closed to free its handle (`suspend`); reopened by identity when next read
    suspended: bool = False
    dev: int = 0
    ino: int = 0
    pos: int = 0
    base: int = 0
    seen_size: int = 0
    note: str = ""
    #: why the path was last refused (a symlink, FIFO, ...), "" when it was not
    refused: str = ""
    #: the file changed while the shipper was down (set by `open`, for the first batch's report)
    lost: Generation | None = None
    #: the last (up to) `FP_BYTES` bytes before `pos`, as read
    _recent: bytes = b""
    #: a read found them changed: the file was rewritten (`check_generation` switches)
    _rewritten: bool = False
    _partial: bytes = b""
    _partial_start: int = 0
    _partial_ts: float = 0.0
    _partial_extra: int = 0
    _skipping: bool = False

    def open(self) -> bool:
        """Open the file, resuming from `resume` when it still names this file. False if absent
        or refused (`refused` says why): only a regular file of the volume is ever read."""
        opened = self._open_regular()
        if opened is None:
            return False
        fd, st = opened
        self._hold(fd, st)
        cur = self.resume
        same = cur is not None and (cur.dev, cur.ino) == (st.st_dev, st.st_ino)
        if cur is None:
            self.pos, self.base = 0, 0
        elif same and st.st_size >= cur.pos and self._matches(cur.pos, self.resume_fp):
            self.pos, self.base = cur.pos, cur.base
        else:
            # Replaced, truncated or rewritten while we were down: what lay past the checkpoint is
            # gone, and how much of it there was is unknowable.
            self.pos, self.base = 0, cur.off
            self._recent = b""
            reason = "truncated or rewritten" if same else "replaced"
            self.note = f"file {reason} since the checkpoint; continuing the count"
            self.lost = Generation(cur.off, 0, Cursor(st.st_dev, st.st_ino, 0, cur.off), reason, exact=False)
        if self.pos:
            os.lseek(fd, self.pos, os.SEEK_SET)
        self._partial_start = self.pos
        self.seen_size = max(st.st_size, self.pos)
        return True

    def _matches(self, pos: int, fp: str) -> bool:
        """The file holds bytes before `pos` whose fingerprint is `fp` (always, for no `fp`); keeps
        them as `_recent`."""
        n = min(FP_BYTES, pos)
        try:
            data = os.pread(self.fd, n, pos - n)
        except OSError:
            return False
        self._recent = data
        return len(data) == n and (not fp or fingerprint(data) == fp)

    def _intact(self, pos: int) -> bool:
        """The file still holds `_recent` just before `pos` (it was appended to, not rewritten)."""
        expected = self._recent
        if not expected:
            return True
        try:
            return os.pread(self.fd, len(expected), pos - len(expected)) == expected
        except OSError:
            return False

    def _open_regular(self) -> tuple[int, os.stat_result] | None:
        """The path opened (`open_regular`), or None: absent, refused, or not now (EMFILE, EACCES:
        `refused` says why, and the next look tries again)."""
        try:
            opened = open_regular(self.path, self.volume_dev)
        except FileNotFoundError:
            return None
        except OSError as exc:
            self.refused = exc.strerror or type(exc).__name__
            return None
        self.refused = ""
        return opened

    def _hold(self, fd: int, st: os.stat_result) -> None:
        """Make `fd` (the file `st`) the one read, counted against the open-file cap."""
        self.fd, self.dev, self.ino, self.suspended = fd, st.st_dev, st.st_ino, False
        if self.files is not None:
            self.files.opened(self)

    def _release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            if self.files is not None:
                self.files.closed(self)

    def close(self) -> None:
        self._release()
        self.suspended = False

    def suspend(self) -> None:
        """Close the file to free its handle; the next read reopens it by identity."""
        if self.fd >= 0:
            self._release()
            self.suspended = True

    def _reopen(self) -> bool:
        """Reopen a suspended file: True when the path still names the same file (dev, inode)."""
        opened = self._open_regular()
        if opened is None:
            return False
        fd, st = opened
        if (st.st_dev, st.st_ino) != (self.dev, self.ino):
            os.close(fd)  # replaced while closed: `check_generation` switches to it
            return False
        os.lseek(fd, self.pos, os.SEEK_SET)
        self._hold(fd, st)
        return True

    @property
    def is_open(self) -> bool:
        return self.fd >= 0 or self.suspended

    @property
    def cursor(self) -> Cursor:
        """Resume point after every complete line returned so far."""
        return Cursor(self.dev, self.ino, self._partial_start, self.base)

    @property
    def has_partial(self) -> bool:
        return bool(self._partial) or self._skipping

    def stream_end(self) -> int:
        """The stream offset of the file's current end (for lag). Not kept as `seen_size`: the
        file may have been rewritten meanwhile, and only a size seen with its content intact is."""
        size = self.seen_size
        if self.fd >= 0:
            try:
                size = max(size, os.fstat(self.fd).st_size)
            except OSError:
                pass
        return self.base + max(size, self.pos)

    def read(self) -> Chunk | None:
        """Up to `read_size` bytes as complete lines; None when no byte was there to read."""
        if self.fd < 0 and not (self.suspended and self._reopen()):
            return None
        if self.files is not None:
            self.files.used(self)
        start = self.pos
        data = os.read(self.fd, self.read_size)
        if not data:
            return None
        if not self._intact(start):
            # Rewritten before or while we read: `data` may be new content from mid-line. Unused.
            os.lseek(self.fd, start, os.SEEK_SET)
            self._rewritten = True
            return None
        self._recent = (self._recent + data[-FP_BYTES:])[-FP_BYTES:]
        now = time.time()
        ts = self._partial_ts if self.has_partial else now
        self.pos += len(data)
        self.seen_size = max(self.seen_size, self.pos)
        if self._skipping:
            nl = data.find(b"\n")
            if nl < 0:
                self._partial_extra += count_chars(data)
                return Chunk(self.base + self._partial_start, 0, self.base + self._partial_start, ts, self.cursor)
            self._partial_extra += count_chars(data[:nl])
            offs = [self.base + self._partial_start]
            raws = [self._partial]
            extras = {0: self._partial_extra}
            self._reset_partial()
            buf = data[nl + 1:]
            line_start = start + nl + 1
            parts = buf.split(b"\n")
            rest = parts.pop()
            if parts:
                more = list(accumulate(map(_PLUS_ONE, map(len, parts)), initial=self.base + line_start))
                more.pop()
                offs.extend(more)
                raws.extend(parts)
                line_start += len(buf) - len(rest)
                self._partial_ts = now
            else:
                self._partial_ts = now
            chunk = Chunk(offs[0], len(raws), self.base + line_start, ts, Cursor(self.dev, self.ino, line_start, self.base),
                          extras=extras, pieces=raws, piece_offs=offs)
        else:
            line_start = self._partial_start
            buf = self._partial + data if self._partial else data
            nl = buf.rfind(b"\n")
            rest = buf[nl + 1:]
            if nl >= 0:
                joined = buf[:nl]
                first = self.base + line_start
                line_start += nl + 1
                self._partial_ts = now
                chunk = Chunk(first, _newlines(joined) + 1, self.base + line_start, ts,
                              Cursor(self.dev, self.ino, line_start, self.base), joined)
            else:
                if not self._partial:
                    self._partial_ts = now
                chunk = Chunk(self.base + line_start, 0, self.base + line_start, ts, self.cursor)
        self._partial_start = line_start
        if len(rest) > self.prefix_bytes:
            cut = char_boundary(rest, self.prefix_bytes)
            self._partial = rest[:cut]
            self._partial_extra = count_chars(rest[cut:])
            self._skipping = True
        else:
            self._partial = rest
        return chunk

    def flush_partial(self) -> Chunk | None:
        """The unterminated last line as a line of its own (at drain, or once its writer exited)."""
        if not self.has_partial:
            return None
        off = self.base + self._partial_start
        chunk = Chunk(off, 1, self.base + self.pos, self._partial_ts, Cursor(self.dev, self.ino, self.pos, self.base),
                      extras={0: self._partial_extra} if self._skipping else {},
                      pieces=[self._partial], piece_offs=[off])
        self._reset_partial()
        self._partial_start = self.pos
        return chunk

    def _reset_partial(self) -> None:
        self._partial = b""
        self._partial_extra = 0
        self._skipping = False

    def check_generation(self) -> tuple[Chunk | None, Generation] | None:
        """At the end of the file: has it been replaced or truncated? Then switch to the new one.

        Returns the old generation's unterminated last line (if any) and the change, or None.
        Call only after `read()` returned None, so a replaced file's old inode was read to its end.
        """
        if self.fd < 0 and not (self.suspended and self._reopen()):
            return self._replaced_while_closed()
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return None  # deleted: keep reading the open file; nothing new will come
        try:
            size = os.fstat(self.fd).st_size
        except OSError:
            size = self.pos
        replaced = (st.st_dev, st.st_ino) != (self.dev, self.ino)
        # The size first, then the content: a size seen before the content proved unchanged is
        # the old generation's, so what lies past our position is a true lower bound of a loss.
        truncated = not replaced and (size < self.pos or self._rewritten or not self._intact(self.pos))
        if not replaced and not truncated:
            self.seen_size = max(self.seen_size, size)
            return None
        opened = self._open_other() if replaced else None
        if replaced and opened is None:
            return None  # gone again, or replaced by something never read: keep the old file
        # A replaced file was read to its end (exact); a truncated or rewritten one held unknown
        # bytes past our position.
        return self._switch(opened, "replaced" if replaced else "truncated" if size < self.pos else "rewritten",
                            exact=replaced)

    def _replaced_while_closed(self) -> tuple[Chunk | None, Generation] | None:
        """A suspended file's name now names another regular file: switch to it. What the old
        file got after it was closed is unknowable, so the change is not exact."""
        if not self.suspended:
            return None
        opened = self._open_other()
        if opened is None:
            return None
        return self._switch(opened, "replaced", exact=False)

    def _open_other(self) -> tuple[int, os.stat_result] | None:
        """The path opened when it names another file than ours now, else None."""
        opened = self._open_regular()
        if opened is not None and (opened[1].st_dev, opened[1].st_ino) == (self.dev, self.ino):
            os.close(opened[0])  # still ours (the name changed twice between our looks, or not at all)
            return None
        return opened

    def _switch(self, opened: tuple[int, os.stat_result] | None, reason: str,
                exact: bool) -> tuple[Chunk | None, Generation]:
        """Start the next generation: in `opened`, or from the start of the same file."""
        tail = self.flush_partial()
        lost = max(self.seen_size - self.pos, 0)
        lost_off = self.base + self.pos
        if opened is not None:
            self._release()
            self._hold(*opened)
        else:
            os.lseek(self.fd, 0, os.SEEK_SET)
        self.base, self.pos, self._partial_start = lost_off + lost, 0, 0
        self.seen_size = 0
        self._recent, self._rewritten = b"", False
        return tail, Generation(lost_off, lost, self.cursor, reason, exact)
