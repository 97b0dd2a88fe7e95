"""`TailRing`: the lines of a stream past its budget, of which only the newest are kept.

Once a stream shipped `stream_budget_bytes`, its lines go here instead of into batches. The ring
keeps the longest suffix within `cap` encoded bytes (at least one line); the lines it pushes out
are only counted, as one `Dropped` report. At drain the report and the kept lines are shipped (then `clear`); when
the file is replaced or truncated, everything in the ring is reported as dropped instead.

With `report_bytes`, the pushed-out lines are also cut into reports of their own (`take_reports`)
as they go: each the shortest run of them, right after the previous one, that reaches
`report_bytes` stream bytes. Where each report ends depends only on the lines, not on how they
were read, so a shipper restarted from the checkpoint after one forms the same next one.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from operator import sub

from blastlogs.protocol import Dropped


class TailRing:
    def __init__(self, cap: int, report_bytes: int = 0) -> None:
        self.cap = cap
        self.report_bytes = report_bytes
        #: complete reports of pushed-out lines, oldest first, not yet taken
        self.reports: list[Dropped] = []
        #: (stream offset, stream bytes, encoded event) of each kept line, oldest first
        self.lines: deque[tuple[int, int, bytes]] = deque()
        #: encoded bytes held
        self.nbytes = 0
        #: the lines pushed out so far, as one report
        self.dropped: Dropped | None = None

    def __len__(self) -> int:
        return len(self.lines)

    @property
    def empty(self) -> bool:
        """Nothing held and nothing dropped: nothing to report."""
        return not self.lines and self.dropped is None

    def extend(self, offs: Sequence[int], ends: Sequence[int], events: Sequence[bytes]) -> None:
        """Take lines (stream offsets, where each ends, encoded events), pushing out the oldest.

        All at once, exactly as if they came one by one.
        """
        lines = self.lines
        lines.extend(zip(offs, map(sub, ends, offs), events, strict=True))
        self.nbytes += sum(map(len, events))
        if self.nbytes <= self.cap or len(lines) <= 1:
            return
        first, count, nbytes = lines[0][0], 0, 0
        limit = self.report_bytes
        while self.nbytes > self.cap and len(lines) > 1:
            off, size, event = lines.popleft()
            self.nbytes -= len(event)
            if not count:
                first = off
            count += 1
            nbytes += size
            if limit and nbytes + (self.dropped.bytes if self.dropped else 0) >= limit:
                piece = Dropped(first, count, nbytes)
                self.reports.append(piece if self.dropped is None else self.dropped.merge(piece))
                self.dropped, count, nbytes = None, 0, 0
        if count:
            self._add(Dropped(first, count, nbytes))

    def _add(self, drop: Dropped) -> None:
        self.dropped = drop if self.dropped is None else self.dropped.merge(drop)

    def take_reports(self) -> list[Dropped]:
        """The complete reports formed since last asked (`report_bytes`), oldest first."""
        out, self.reports = self.reports, []
        return out

    def discard(self, upto: int) -> Dropped | None:
        """Empty the ring: everything held or dropped, as one report ending at stream offset `upto`."""
        drop = None
        for piece in [*self.take_reports(), *([self.dropped] if self.dropped else [])]:
            drop = piece if drop is None else drop.merge(piece)
        if self.lines:
            first = self.lines[0][0]
            held = Dropped(first, len(self.lines), upto - first)
            drop = held if drop is None else Dropped(drop.off, drop.lines + held.lines, upto - drop.off)
        self.clear()
        return drop

    def clear(self) -> None:
        """Empty the ring (its lines were shipped, its report taken)."""
        self.lines.clear()
        self.nbytes = 0
        self.dropped = None
