"""The sanitising worker: a child process that runs `prepare` on chunks the shipper pipes to it.

Sanitising and encoding are most of the shipper's CPU and the GIL keeps them on one core; a worker
process gives a log flood the pod's second core. The worker is stateless between requests (each
carries the redactor state to start from), holds no token (the shipper starts it without the
`BLAST_LOGS_*` environment), never logs a line's content, and exits when its stdin closes, so it
cannot outlive the shipper.

Wire format, both directions little-endian over the worker's stdin and stdout (the pipes are raised
to 1 MiB where the kernel allows):

- request: `<QqdqII` = data length, stream offset of the first line, ts, PEM lines (-1 when none),
  env-name length, number of lines; then the env name (UTF-8), the line ends (`array('q')` bytes,
  `Chunk.ends`: the shipper's reader splits the lines anyway) and the data (complete lines joined
  with "\\n", no trailing newline).
- reply: `<BQqIIII` = status (0 ok, 1 failed: the shipper redoes the chunk), events length, PEM
  lines, env-name length, counts length, truncated, number of lines; then the env name, the
  redaction counts (JSON), `Events.bounds` and `Events.offs` (`array('q')` bytes, one more item
  than lines each) and the events joined with "," (`Events.buf`).

    python -m shipper.sanitise_worker --max-line-chars 4000
"""

from __future__ import annotations

import gc

if __name__ == "__main__":
    # No cyclic GC while the modules below load; main() collects once, freezes what start-up
    # kept (`shipper.cli.run_command` does the same) and enables it: 17M instructions, 4.3 % of
    # this worker's start (docs/benchmarks.md, "The shipper's CPU per line, round six").
    gc.disable()

import argparse
import fcntl
import os
import signal
import struct
import sys
from array import array
from typing import BinaryIO, Final

import orjson

from shipper.batch import Events
from shipper.prepare import Prepared, prepare
from shipper.reader import Chunk, Cursor
from shipper.redact import RedactorState
from shipper.sanitise import Sanitiser

REQUEST: Final = struct.Struct("<QqdqII")
REPLY: Final = struct.Struct("<BQqIIII")
STATUS_OK: Final = 0
STATUS_FAILED: Final = 1
#: F_SETPIPE_SZ (Linux): fewer context switches per 256 KiB read than the default 64 KiB pipe.
_F_SETPIPE_SZ: Final = 1031
PIPE_SIZE: Final = 1024 * 1024
_NO_CURSOR: Final = Cursor(0, 0, 0, 0)


def widen_pipe(fd: int) -> None:
    """Ask for a 1 MiB pipe buffer; keep the default where the kernel says no."""
    try:
        fcntl.fcntl(fd, _F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass


def encode_request(chunk: Chunk, state: RedactorState) -> list[bytes]:
    """The request for a plain chunk (`joined` set), as pieces to write in order."""
    assert chunk.joined is not None
    env = state[1].encode()
    ends = array("q", chunk.ends).tobytes()
    return [REQUEST.pack(len(chunk.joined), chunk.first, chunk.ts, state[0], len(env), chunk.count),
            env, ends, chunk.joined]


def decode_request(head: bytes, body: bytes) -> tuple[Chunk, RedactorState]:
    n_data, first, ts, pem, n_env, count = REQUEST.unpack(head)
    ends = array("q")
    ends.frombytes(body[n_env : n_env + 8 * count])
    given = ends.tolist()
    data = body[n_env + 8 * count :]
    if len(given) != count or len(data) != n_data or (count and given[-1] != n_data + 1):
        raise ValueError("inconsistent request")
    chunk = Chunk(first, count, first + n_data + 1, ts, _NO_CURSOR, data, given_ends=given)
    return chunk, (pem, body[:n_env].decode())


def request_body_size(head: bytes) -> int:
    n_data, _, _, _, n_env, count = REQUEST.unpack(head)
    return int(n_env + 8 * count + n_data)


def encode_reply(p: Prepared) -> bytes:
    env = p.state[1].encode()
    counts = orjson.dumps(p.redactions)
    ev = p.encoded
    head = REPLY.pack(STATUS_OK, len(ev.buf), p.state[0], len(env), len(counts), p.truncated, len(ev))
    return b"".join((head, env, counts, ev.bounds.tobytes(), ev.offs.tobytes(), ev.buf))


FAILED_REPLY: Final = REPLY.pack(STATUS_FAILED, 0, -1, 0, 0, 0, 0)


def decode_reply(head: bytes, body: bytes, chunk: Chunk, start: RedactorState) -> Prepared | None:
    """The `Prepared` a reply carries (`body` is everything after the header) for `chunk`; None for
    a failure, or a reply that does not fit the chunk."""
    status, n_buf, pem, n_env, n_counts, truncated, n_lines = REPLY.unpack(head)
    if status != STATUS_OK or n_lines != chunk.count:
        return None
    pos = n_env + n_counts
    env = body[:n_env].decode()
    counts: dict[str, int] = orjson.loads(body[n_env:pos]) if n_counts else {}
    bounds, offs = array("q"), array("q")
    bounds.frombytes(body[pos : pos + 8 * (n_lines + 1)])
    pos += 8 * (n_lines + 1)
    offs.frombytes(body[pos : pos + 8 * (n_lines + 1)])
    pos += 8 * (n_lines + 1)
    buf = body[pos : pos + n_buf]
    if offs[0] != chunk.first or offs[-1] != chunk.end or bounds[-1] != len(buf) + 1:
        return None
    return Prepared(Events(buf, bounds, offs), counts, truncated, start, (pem, env))


def reply_body_size(head: bytes) -> int:
    status, n_buf, _, n_env, n_counts, _, n_lines = REPLY.unpack(head)
    return int(n_buf + n_env + n_counts + (16 * (n_lines + 1) if status == STATUS_OK else 0))


def _read_exactly(stream: BinaryIO, n: int) -> bytes | None:
    data = stream.read(n)
    return data if data is not None and len(data) == n else None


def serve(stdin: BinaryIO, stdout: BinaryIO, san: Sanitiser) -> None:
    """Answer requests until stdin closes."""
    while True:
        head = _read_exactly(stdin, REQUEST.size)
        if head is None:
            return
        body = _read_exactly(stdin, request_body_size(head))
        if body is None:
            return
        try:
            chunk, state = decode_request(head, body)
            reply = encode_reply(prepare(san, chunk, state))
        except Exception:  # the shipper redoes the chunk itself; say nothing of its content
            print("blast-log-shipper sanitise worker: a chunk failed; the shipper redoes it", file=sys.stderr)
            reply = FAILED_REPLY
        stdout.write(reply)
        stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shipper.sanitise_worker")
    parser.add_argument("--max-line-chars", type=int, required=True)
    args = parser.parse_args(argv)
    gc.collect()
    gc.freeze()
    gc.enable()
    # The shipper decides when to stop (it closes our stdin); a terminal's ^C or a group-wide
    # SIGTERM must not kill the worker under a shipper that is still draining.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    widen_pipe(0)
    widen_pipe(1)
    san = Sanitiser(max_chars=args.max_line_chars)
    serve(os.fdopen(0, "rb"), os.fdopen(1, "wb", buffering=0), san)
    return 0


if __name__ == "__main__":
    sys.exit(main())
