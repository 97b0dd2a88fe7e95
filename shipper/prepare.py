"""A chunk of raw lines in, its encoded events out: the per-read work that can run anywhere.

`prepare` is the whole sanitise-and-encode step for one `Chunk`, a pure function of the chunk and
the redactor's state before it (a PEM block or a Kubernetes env entry can span reads). It runs in
the shipper's own process or in a sanitising worker process (`shipper.sanitise_worker`) and gives
the same bytes either way; `Prepared` says which state it started from, so a result computed on a
guess can be checked against the state the previous chunk really ended in.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from dataclasses import dataclass
from typing import Final

import orjson

from shipper.batch import Events, encode_events
from shipper.reader import Chunk
from shipper.redact import CLEAN_STATE, RedactorState
from shipper.sanitise import Sanitiser

try:
    from shipper import _hotpath
except ImportError:  # built without a C compiler: the pure-Python path gives the same bytes
    _hotpath = None  # type: ignore[assignment]

#: Whether the compiled hot path is in use (the start-up log says so: `compiled_hot_path`).
COMPILED: Final = _hotpath is not None

#: Buffers the compiled path writes a read's events into before copying them out (with the Python
#: path's lines spliced in), reused from read to read so that their pages stay faulted in: one per
#: read being prepared at once (one, on the event loop), and none kept past `_SCRATCH_KEPT` bytes.
_scratch: list[bytearray] = []
_SCRATCH_KEPT: Final = 4 << 20


@dataclass(frozen=True)
class Prepared:
    """One chunk's events, in line order, and what sanitising them counted."""

    #: the events as one buffer, with each line's stream offset
    encoded: Events
    #: secrets hidden in this chunk, by kind
    redactions: dict[str, int]
    #: lines of this chunk cut to the line cap
    truncated: int
    #: the redactor state this result was computed from, and the state after its last line
    start: RedactorState
    state: RedactorState

    def __len__(self) -> int:
        return len(self.encoded)

    @property
    def offs(self) -> list[int]:
        """Each line's stream offset (not on the hot path)."""
        return self.encoded.offs[:-1].tolist()

    @property
    def events(self) -> list[bytes]:
        """Each line's event as bytes of its own (not on the hot path)."""
        return self.encoded.events()


def sanitise_chunk(san: Sanitiser, chunk: Chunk) -> list[str]:
    """The chunk's lines sanitised, in as few bulk passes as its shape allows."""
    if not chunk.count:
        return []
    if chunk.joined is not None:  # the reader's one piece (never with extras)
        return san.joined_lines(chunk.joined, chunk.ends)
    raws = chunk.raws
    if not chunk.extras:
        return san.lines(raws)
    texts: list[str] = []
    prev = 0
    for i in sorted(chunk.extras):
        if i > prev:
            texts.extend(san.lines(raws[prev:i]))
        texts.append(san.line(raws[i], chunk.extras[i]))
        prev = i + 1
    if prev < len(raws):
        texts.extend(san.lines(raws[prev:]))
    return texts


def prepare(san: Sanitiser, chunk: Chunk, start: RedactorState) -> Prepared:
    """Sanitise and encode `chunk` as if the redactor stood at `start` before its first line.

    Uses `san` as scratch: its state and counters are overwritten.
    """
    san.state = start
    san.redactions.clear()
    san.truncated = 0
    if _hotpath is not None and chunk.joined is not None and start == CLEAN_STATE:
        fast = _prepare_compiled(san, chunk, chunk.joined)
        if fast is not None:
            return fast
    texts = sanitise_chunk(san, chunk)
    events = Events.of(encode_events(chunk.offs, chunk.ts, texts), chunk.offs, chunk.end)
    return Prepared(events, dict(san.redactions), san.truncated, start, san.state)


def _prepare_compiled(san: Sanitiser, chunk: Chunk, raw: bytes) -> Prepared | None:
    """`prepare` of a plain read from the clean state, with the compiled hot path encoding every
    line that sanitising leaves as it is, and rendering (escapes, carriage returns) and encoding
    most lines with control characters, into one buffer; the others (needles, invalid UTF-8, over
    the cap, shapes it does not render) go through `Sanitiser.some_lines` with what the scans of
    the whole read found, and so do the rendered lines' texts, for the redaction pre-check they
    need; their events are spliced in as the buffer is copied out of the scratch. None when the
    redactor's state must see the read line by line (then `sanitise_chunk` does it all)."""
    own_hits, rule_hits = san.needle_hits(raw)
    ts = orjson.dumps(chunk.ts)
    scratch = _scratch.pop() if _scratch else bytearray()
    try:
        length, bounds_bytes, offs_bytes, slow, controls, rendered = _hotpath.encode_chunk(
            scratch, raw, chunk.first, ts, san.max_chars, sorted(own_hits + rule_hits))
        offs = array("q")
        offs.frombytes(offs_bytes)
        texts: dict[int, str] = {}
        if slow or rendered:
            first = chunk.first
            raws = {i: raw[offs[i] - first:offs[i + 1] - first - 1] for i in slow}
            sanitised = san.some_lines(raws, controls, *(
                {bisect_right(offs, first + pos) - 1 for pos in found} for found in (own_hits, rule_hits)),
                rendered=rendered)
            if sanitised is None:
                return None
            texts = sanitised
        order = sorted(texts)
        buf, bounds_bytes = _hotpath.splice(scratch, length, bounds_bytes, order, encode_events(
            [offs[i] for i in order], chunk.ts, [texts[i] for i in order]))
    finally:
        if len(scratch) <= _SCRATCH_KEPT:
            _scratch.append(scratch)
    bounds = array("q")
    bounds.frombytes(bounds_bytes)
    return Prepared(Events(buf, bounds, offs), dict(san.redactions), san.truncated, CLEAN_STATE, san.state)
