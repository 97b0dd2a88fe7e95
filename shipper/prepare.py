"""A chunk of raw lines in, its encoded events out: the per-read work that can run anywhere.

`prepare` is the whole sanitise-and-encode step for one `Chunk`, a pure function of the chunk and
the redactor's state before it (a PEM block or a Kubernetes env entry can span reads). It runs in
the shipper's own process or in a sanitising worker process (`shipper.sanitise_worker`) and gives
the same bytes either way; `Prepared` says which state it started from, so a result computed on a
guess can be checked against the state the previous chunk really ended in.
"""

from __future__ import annotations

from dataclasses import dataclass

from shipper.batch import encode_events
from shipper.reader import Chunk
from shipper.redact import RedactorState
from shipper.sanitise import Sanitiser


@dataclass(frozen=True)
class Prepared:
    """One chunk's events, in line order, and what sanitising them counted."""

    offs: list[int]
    events: list[bytes]
    #: secrets hidden in this chunk, by kind
    redactions: dict[str, int]
    #: lines of this chunk cut to the line cap
    truncated: int
    #: the redactor state this result was computed from, and the state after its last line
    start: RedactorState
    state: RedactorState


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
    texts = sanitise_chunk(san, chunk)
    events = encode_events(chunk.offs, chunk.ts, texts)
    return Prepared(chunk.offs, events, dict(san.redactions), san.truncated, start, san.state)
