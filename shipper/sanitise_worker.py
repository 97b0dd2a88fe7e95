"""The sanitising worker: a child process that runs `prepare` on chunks the shipper pipes to it.

Sanitising and encoding are most of the shipper's CPU and the GIL keeps them on one core; a worker
process gives a log flood the pod's second core. The worker is stateless between requests (each
carries the redactor state to start from), holds no token (the shipper starts it without the
`BLAST_LOGS_*` environment), never logs a line's content, and exits when its stdin closes, so it
cannot outlive the shipper.

Wire format, both directions little-endian over the worker's stdin and stdout (the pipes are raised
to 1 MiB where the kernel allows):

- request: `<QqdqI` = data length, stream offset of the first line, ts, PEM lines (-1 when none),
  env-name length; then the env name (UTF-8) and the data (complete lines joined with "\\n", no
  trailing newline).
- reply: `<BQQqII` = status (0 ok, 1 failed: fall back), events length, offsets length, PEM lines,
  env-name length, counts length, truncated (`<I`); then the env name, the redaction counts
  (JSON), the events joined with "\\n" (encoded events never hold a raw newline) and the offsets
  (`array('q')` bytes).

    python -m shipper.sanitise_worker --max-line-chars 4000
"""

from __future__ import annotations

import argparse
import fcntl
import os
import signal
import struct
import sys
from array import array
from itertools import accumulate
from typing import BinaryIO, Final

import orjson

from shipper.prepare import Prepared, prepare
from shipper.reader import Chunk, Cursor
from shipper.redact import RedactorState
from shipper.sanitise import Sanitiser

REQUEST: Final = struct.Struct("<QqdqI")
REPLY: Final = struct.Struct("<BQQqIII")
STATUS_OK: Final = 0
STATUS_FAILED: Final = 1
#: F_SETPIPE_SZ (Linux): fewer context switches per 256 KiB read than the default 64 KiB pipe.
_F_SETPIPE_SZ: Final = 1031
PIPE_SIZE: Final = 1024 * 1024
_PLUS_ONE: Final = (1).__add__
_NO_CURSOR: Final = Cursor(0, 0, 0, 0)


def widen_pipe(fd: int) -> None:
    """Ask for a 1 MiB pipe buffer; keep the default where the kernel says no."""
    try:
        fcntl.fcntl(fd, _F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass


def encode_request(start: int, data: bytes, ts: float, state: RedactorState) -> bytes:
    env = state[1].encode()
    return REQUEST.pack(len(data), start, ts, state[0], len(env)) + env + data


def chunk_from_data(start: int, data: bytes, ts: float) -> Chunk:
    """The `Chunk` a reader would have made of complete lines `data` starting at stream offset `start`."""
    raws = data.split(b"\n")
    offs = list(accumulate(map(_PLUS_ONE, map(len, raws)), initial=start))
    end = offs.pop()
    return Chunk(start, len(raws), end, ts, _NO_CURSOR, data, pieces=raws, piece_offs=offs)


def encode_reply(p: Prepared) -> bytes:
    env = p.state[1].encode()
    counts = orjson.dumps(p.redactions)
    events = b"\n".join(p.events)
    offs = array("q", p.offs).tobytes()
    head = REPLY.pack(STATUS_OK, len(events), len(offs), p.state[0], len(env), len(counts), p.truncated)
    return b"".join((head, env, counts, events, offs))


FAILED_REPLY: Final = REPLY.pack(STATUS_FAILED, 0, 0, -1, 0, 0, 0)


def decode_reply(head: bytes, body: bytes, start: RedactorState) -> Prepared | None:
    """The `Prepared` a reply carries (`body` is everything after the header); None for a failure."""
    status, n_events, n_offs, pem, n_env, n_counts, truncated = REPLY.unpack(head)
    if status != STATUS_OK:
        return None
    pos = n_env + n_counts
    env = body[:n_env].decode()
    counts: dict[str, int] = orjson.loads(body[n_env:pos]) if n_counts else {}
    events = body[pos : pos + n_events].split(b"\n") if n_events else []
    offs = array("q")
    offs.frombytes(body[pos + n_events : pos + n_events + n_offs])
    return Prepared(offs.tolist(), events, counts, truncated, start, (pem, env))


def reply_body_size(head: bytes) -> int:
    _, n_events, n_offs, _, n_env, n_counts, _ = REPLY.unpack(head)
    return int(n_events + n_offs + n_env + n_counts)


def _read_exactly(stream: BinaryIO, n: int) -> bytes | None:
    data = stream.read(n)
    return data if data is not None and len(data) == n else None


def serve(stdin: BinaryIO, stdout: BinaryIO, san: Sanitiser) -> None:
    """Answer requests until stdin closes."""
    while True:
        head = _read_exactly(stdin, REQUEST.size)
        if head is None:
            return
        n_data, start, ts, pem, n_env = REQUEST.unpack(head)
        body = _read_exactly(stdin, n_env + n_data)
        if body is None:
            return
        try:
            state = (pem, body[:n_env].decode())
            reply = encode_reply(prepare(san, chunk_from_data(start, body[n_env:], ts), state))
        except Exception:  # the shipper redoes the chunk itself; say nothing of its content
            print("blast-log-shipper sanitise worker: a chunk failed; the shipper redoes it", file=sys.stderr)
            reply = FAILED_REPLY
        stdout.write(reply)
        stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shipper.sanitise_worker")
    parser.add_argument("--max-line-chars", type=int, required=True)
    args = parser.parse_args(argv)
    # The shipper decides when to stop (it closes our stdin); a terminal's ^C or a group-wide
    # SIGTERM must not kill the worker under a shipper that is still draining.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    widen_pipe(0)
    widen_pipe(1)
    san = Sanitiser(max_chars=args.max_line_chars)
    serve(os.fdopen(0, "rb", buffering=PIPE_SIZE), os.fdopen(1, "wb", buffering=0), san)
    return 0


if __name__ == "__main__":
    sys.exit(main())
