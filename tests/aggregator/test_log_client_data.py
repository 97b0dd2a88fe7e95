"""Nothing a client sent in a header or a path is logged raw (issue 18): tokens with every control
character in `Authorization`, tokens in paths (with `\\x7f`, percent-encoded, as a job id), and as
the method, sent as raw bytes to the real `blast-log-aggregator serve`; then every log line is read."""

from __future__ import annotations

import socket
from typing import Any

import orjson
from conftest import TEST_ADMIN_TOKEN, TEST_SECRET

from aggregator.auth import job_token

JOB = "elb-logs-1"
CONTROLS = [bytes([c]) for c in (*range(32), 127)]


def exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        try:
            return s.recv(4096)
        except TimeoutError:
            return b""


def requests_with(token: bytes) -> list[bytes]:
    body = orjson.dumps({"job_id": JOB, "pod": "p", "container": "c", "phase": "running", "seq": 0, "events": []})
    head = b"Host: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
    out = []
    for c in CONTROLS:
        for auth in (b"Bearer " + token + c + b"z", token + c, c + token):
            out.append(b"POST /v1/ingest HTTP/1.1\r\n" + head + b"Authorization: " + auth + b"\r\n\r\n" + body)
            out.append(b"POST /v1/jobs/" + JOB.encode() + b"/finalize HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                       b"Authorization: " + auth + b"\r\n\r\n{}")
        out.append(b"GET /" + token + c + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        out.append(b"X-Token: " + token + c + b"\r\n\r\n")  # no request line at all
    hexed = "".join(f"%{b:02x}" for b in token).encode()
    for path in (b"/v1/jobs/" + token + b"\x7f/finalize", b"/v1/jobs/" + token + b"/finalize",
                 b"/v1/jobs/" + hexed + b"/finalize", b"/" + token + b"\x7f", b"/healthz?t=" + token + b"\x7f",
                 b"/healthz?t=" + token, b"/v1/ingest/" + token):
        for auth in (b"", b"Authorization: Bearer " + token + b"\r\n"):
            out.append(b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n" + auth + b"\r\n{}")
    out.append(token + b" / HTTP/1.1\r\nHost: x\r\n\r\n")  # the token as the method
    out.append(b"GET / HTTP/1.1\r\nHost: " + token + b"\x7f\r\nUser-Agent: " + token + b"\r\n\r\n")
    return out


def test_no_header_or_path_is_logged_raw(start_aggregator: Any) -> None:
    agg = start_aggregator(BLAST_LOGS_LOG_LEVEL="DEBUG")
    tokens = {"job token": job_token(TEST_SECRET, JOB), "admin token": TEST_ADMIN_TOKEN,
              "other job's token": job_token(TEST_SECRET, "elb-other")}
    sent = 0
    for token in tokens.values():
        for data in requests_with(token.encode()):
            exchange(agg.port, data)
            sent += 1
    agg.stop()
    text = agg.log_path.read_text(errors="replace")
    lines = text.splitlines()
    assert len(lines) > sent // 2, "the requests were logged"
    secrets = {**tokens, **{f"{k} MAC": v.rsplit(".", 1)[-1] for k, v in tokens.items() if "." in v}}
    for line in lines:
        record = orjson.loads(line)  # every line is one JSON record
        assert record.get("level") != "error", line
        leaked = [what for what, value in secrets.items() if value in line]
        assert not leaked, f"{leaked} in {line[:300]}"
        assert "\x7f" not in line and not any(0 < ord(ch) < 32 for ch in line), line[:300]
