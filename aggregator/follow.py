"""Following a job (docs/protocol.md section 10, "Following"): what is stored past each stream's mark,
then each new batch's events as any replica stores them, found by polling the staging listing (no
pubsub: replicas stay stateless). A follow's resumable state is every stream's mark (`encode_marks`),
sent as each SSE event's id.
"""

from __future__ import annotations

import base64
import binascii
import zlib
from collections.abc import AsyncIterator, Iterator
from functools import partial
from typing import Final

import orjson

from aggregator.artifacts import StreamState, merge_states, phases_of, state_of_batch
from aggregator.checks import is_int
from aggregator.config import AggregatorConfig
from aggregator.errors import BadRequest
from aggregator.fanout import run_bounded
from aggregator.finalize.streams import group_staged
from aggregator.reading import (
    LogEvent,
    Positioned,
    Selection,
    Stream,
    positioned_entries,
    staged_events_backwards,
    take_tail,
    view_job,
)
from aggregator.staging import decode_batch, decode_compacted
from aggregator.storage import Store
from aggregator.storage.layout import parse_staged_key, staging_prefix

#: Events per piece a follower gives (one SSE event each): bounds what a big stream's backlog holds at once.
FOLLOW_PIECE: Final = 500
#: The most a follow's resume id may inflate to (its header is at most 64 KiB; ids compress about 3:1).
MARKS_MAX_BYTES: Final = 1 << 20


def encode_marks(marks: dict[Stream, int]) -> str:
    """A follower's resumable state (an SSE event id): every stream's last position delivered."""
    doc = orjson.dumps(sorted([p, c, pos] for (p, c), pos in marks.items()))
    return base64.urlsafe_b64encode(zlib.compress(doc, 9)).rstrip(b"=").decode("ascii")


def decode_marks(text: str) -> dict[Stream, int]:
    try:
        inflate = zlib.decompressobj()
        raw = inflate.decompress(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)), MARKS_MAX_BYTES)
        if inflate.unconsumed_tail or not inflate.eof:
            raise ValueError("too large or cut")
        doc = orjson.loads(raw)
    except (binascii.Error, ValueError, zlib.error):
        raise BadRequest("Last-Event-ID is not one this service gave") from None
    if not (isinstance(doc, list) and all(
            isinstance(x, list) and len(x) == 3 and isinstance(x[0], str) and isinstance(x[1], str)
            and is_int(x[2]) for x in doc)):
        raise BadRequest("Last-Event-ID is not one this service gave")
    return {(p, c): pos for p, c, pos in doc}


class Follower:
    """Follows a job's staging by polling its listing (any replica's writes show up; no pubsub): each
    stream's events past its mark, each once, as their batches are stored."""

    def __init__(self, store: Store, cfg: AggregatorConfig, job_id: str, sel: Selection,
                 marks: dict[Stream, int] | None = None) -> None:
        self.store = store
        self.cfg = cfg
        self.job_id = job_id
        self.sel = sel
        self.marks: dict[Stream, int] = dict(marks or {})
        self.seen: dict[Stream, set[str]] = {}
        self.top: dict[Stream, tuple[int, str]] = {}
        self.eof: dict[Stream, bool] = {}
        #: staged keys that could not be read, and how often: one retry, then passed over
        self.failed: dict[str, int] = {}

    def _phase(self, stream: Stream) -> str | None:
        """The phase the stream's events are shown under, None when the selection leaves it out."""
        top = self.top.get(stream)
        if top is None:
            return None
        feeds, _ = phases_of(stream[1], top[1], self.cfg.phase_table)
        if self.sel.phase is not None:
            return self.sel.phase if self.sel.phase in feeds else None
        return min(feeds)

    def _pieces(self, stream: Stream, phase: str, entries: list[Positioned]) -> Iterator[list[LogEvent]]:
        """The stream's events past its mark, at most `FOLLOW_PIECE` at a time; the mark moves to each piece's
        end just before it is given, so an id taken then names exactly what was delivered."""
        mark = self.marks.get(stream, -1)
        piece: list[LogEvent] = []
        for pos, ts, text in entries:
            if pos <= mark:
                continue
            if self.sel.wants_entry(pos, ts):
                piece.append(LogEvent(phase, stream[0], stream[1], ts, text, ("s", phase, stream[0], stream[1], pos)))
            if len(piece) >= FOLLOW_PIECE:
                self.marks[stream] = pos
                yield piece
                piece = []
        if entries:
            self.marks[stream] = max(self.marks.get(stream, -1), entries[-1][0])
        if piece:
            yield piece

    async def backlog(self, tail: int | None = None) -> AsyncIterator[list[LogEvent]]:
        """What is stored now past the marks, a stream at a time in artifact order (the last `tail`
        events only, when asked and not resuming)."""
        view = await view_job(self.store, self.cfg, self.job_id)
        order = view.order(self.sel)
        for stream, info in view.info.items():
            self.seen[stream] = view.keys_of(stream)
            self.eof[stream] = info.eof
        for s in (m for members in view.plan.members.values() for m in members):
            self.top[(s.pod, s.container)] = (0, s.phase)
        if tail is not None and not self.marks:
            page = await take_tail(staged_events_backwards(view, self.sel), tail)
            for _, stream in order:
                entries = await view.entries(stream)
                self.marks[stream] = entries[-1][0] if entries else -1
            for ev in reversed(page.events):
                self.marks[(ev.pod, ev.container)] = ev.at[4] - 1
        for phase, stream in order:
            entries = await view.entries(stream)
            view.cache.pop(stream, None)  # sent once: free it as the backlog goes
            for piece in self._pieces(stream, phase, entries):
                yield piece

    async def poll(self) -> AsyncIterator[list[LogEvent]]:
        """New events since the last poll, a stream (and at most `FOLLOW_PIECE` events) at a time."""
        groups = group_staged(self.job_id, await self.store.list_keys(staging_prefix(self.job_id)))
        found: list[tuple[Stream, list[str]]] = []
        for stream, g in groups.items():
            if not self.sel.wants_stream(*stream):
                continue
            seen = self.seen.setdefault(stream, set())
            new = sorted(k for k in [*g.batches.values(), *(k for _, k in g.compacted)] if k not in seen)
            if new:
                found.append((stream, new))
        for stream, new in found:
            read = await run_bounded(self.cfg.read_concurrency, [partial(self._read, k) for k in new])
            failed = [k for k, s in zip(new, read, strict=True) if s is None]
            if any(self.failed.get(k, 0) < 1 for k in failed):
                # A batch gone between listing and reading (a finalize's cleanup, after its compacted object
                # was written) or unreadable: read the stream on the next poll, not past what it held.
                for k in failed:
                    self.failed[k] = self.failed.get(k, 0) + 1
                continue
            self.seen[stream].update(new)
            states = [s for s in read if s is not None]
            if not states:
                continue
            state = merge_states(states)
            self.top[stream] = max(self.top.get(stream, state.top), state.top)
            self.eof[stream] = self.eof.get(stream, False) or state.eof
            phase = self._phase(stream)
            if phase is not None:
                for piece in self._pieces(stream, phase, positioned_entries(state)):
                    yield piece

    async def _read(self, key: str) -> StreamState | None:
        data = await self.store.get(key)
        staged = parse_staged_key(self.job_id, key)
        if data is None or staged is None:
            return None
        try:
            if staged.compacted:
                c = decode_compacted(data)
                return c.state if c.job_id == self.job_id else None
            b = decode_batch(data)
            return state_of_batch(b) if b.job_id == self.job_id else None
        except ValueError:
            return None

    def ended(self) -> bool:
        """Every selected stream has reached eof (and there is at least one)."""
        shown = [s for s in self.eof if self.sel.wants_stream(*s) and self._phase(s) is not None]
        return bool(shown) and all(self.eof[s] for s in shown)
