"""`blast-log-aggregator logs JOB --url URL [...] [-f]`: print a job's logs, like `kubectl logs`.

The stored part comes as pages (`cursor`); with `-f` the same selection is followed over Server-Sent
Events, and a dropped connection resumes from the last event id, so no line is printed twice or skipped.
Uses only the standard library's HTTP client (blocking: a command, not a service).
"""

from __future__ import annotations

import argparse
import http.client
import os
import sys
import time
import urllib.parse
from collections.abc import Iterator
from typing import IO, Any

import orjson

PROG = "blast-log-aggregator logs"
TOKEN_ENV = "BLAST_LOGS_TOKEN"
EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
#: How long a follow retries a connection that cannot be made before giving up.
RECONNECT_BUDGET = 60.0
RECONNECT_PAUSE = 0.5
#: Events per page: the most the server gives (each page of a live job reads its staging once more).
PAGE = 5000


class LogsError(Exception):
    """Something the command reports in one line and exits non-zero for."""


def add_logs_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("job_id")
    p.add_argument("--url", required=True, help="the aggregator, e.g. http://blast-logs-aggregator:8080")
    p.add_argument("--phase")
    p.add_argument("--pod")
    p.add_argument("--container")
    p.add_argument("--since", help="a duration (10m, 2h) or an RFC 3339 time")
    p.add_argument("--tail", type=int, help="only the last N lines")
    p.add_argument("-f", "--follow", action="store_true", help="print what is stored, then follow until every "
                                                                "stream shown has ended")
    p.add_argument("--prefix", action="store_true", help="start each line with pod/container")
    p.add_argument("--source", choices=("auto", "staging", "chunks"), default="auto",
                   help="auto: the chunks once the job is finalized (retention applied), else staging; staging: "
                        "every line while staging keeps it (a follow always reads staging)")
    p.add_argument("--token-file", help=f"a file holding the read token (default: ${TOKEN_ENV})")


def read_token(token_file: str | None) -> str:
    if token_file:
        try:
            with open(token_file, encoding="utf-8") as f:
                token = f.read().rstrip("\r\n")
        except OSError as e:
            raise LogsError(f"cannot read the token file: {e.strerror or e}") from None
    else:
        token = os.environ.get(TOKEN_ENV, "")
    if not token.strip():
        raise LogsError(f"no token: set {TOKEN_ENV} or pass --token-file")
    return token.strip()


def run_logs(args: argparse.Namespace, out: IO[str] | None = None) -> int:
    out = out or sys.stdout
    try:
        token = read_token(args.token_file)
        client = LogsClient(args.url, token, args.job_id)
        query = {k: v for k, v in (("phase", args.phase), ("pod", args.pod), ("container", args.container),
                                   ("since", args.since)) if v}
        if args.source != "auto" and not args.follow:
            query["source"] = args.source
        if args.tail is not None:
            if args.tail < 0:
                raise LogsError("--tail must be >= 0")
            query["tail"] = str(args.tail)
        lines = client.follow(query) if args.follow else client.pages(query)
        for ev in lines:
            out.write(format_line(ev, args.prefix))
            out.flush()
    except LogsError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK
    return EXIT_OK


def format_line(ev: dict[str, Any], prefix: bool) -> str:
    line = str(ev.get("line", ""))
    return f"{ev.get('pod')}/{ev.get('container')} {line}\n" if prefix else line + "\n"


class LogsClient:
    """The logs route of one aggregator, for one job and token."""

    def __init__(self, url: str, token: str, job_id: str) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise LogsError(f"--url must be http(s)://host[:port], not {url!r}")
        self.scheme = parsed.scheme
        self.host = parsed.hostname
        self.port = parsed.port
        self.base = parsed.path.rstrip("/")
        self.token = token
        self.path = f"{self.base}/v1/jobs/{urllib.parse.quote(job_id, safe='')}/logs"

    def _connect(self, timeout: float | None) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        return cls(self.host, self.port, timeout=timeout)

    def _get(self, query: dict[str, str], headers: dict[str, str], timeout: float | None,
             ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        conn = self._connect(timeout)
        conn.request("GET", self.path + "?" + urllib.parse.urlencode(query),
                     headers={"Authorization": f"Bearer {self.token}", **headers})
        resp = conn.getresponse()
        if resp.status != 200:
            body = resp.read()
            conn.close()
            raise LogsError(_error_text(resp.status, body))
        return conn, resp

    def pages(self, query: dict[str, str]) -> Iterator[dict[str, Any]]:
        """Every stored event of the selection, page by page."""
        q = dict(query)
        if "tail" not in q:
            q["limit"] = str(PAGE)
        while True:
            try:
                conn, resp = self._get(q, {}, 60.0)
                body = resp.read()
                more, cursor = resp.getheader("X-More") == "true", resp.getheader("X-Cursor")
                conn.close()
            except (OSError, http.client.HTTPException) as e:
                raise LogsError(f"cannot reach the aggregator: {e}") from None
            for raw in body.splitlines():
                if raw:
                    yield orjson.loads(raw)
            if not more or not cursor:
                return
            q = {**query, "cursor": cursor, "limit": str(PAGE)}
            q.pop("tail", None)

    def follow(self, query: dict[str, str]) -> Iterator[dict[str, Any]]:
        """The stored events, then new ones as they come, until the server's end event; reconnects after a
        dropped connection from the last event id (for up to `RECONNECT_BUDGET` seconds of failures; a
        first connection that fails is an error at once)."""
        last_id: str | None = None
        failing_since: float | None = None
        while True:
            headers = {"Accept": "text/event-stream"}
            if last_id is not None:
                headers["Last-Event-ID"] = last_id
            try:
                conn, resp = self._get({**query, "follow": "1"}, headers, None)
            except (OSError, http.client.HTTPException) as e:
                failing_since = failing_since or time.monotonic()
                if last_id is None or time.monotonic() - failing_since > RECONNECT_BUDGET:
                    raise LogsError(f"cannot reach the aggregator: {e}") from None
                time.sleep(RECONNECT_PAUSE)
                continue
            failing_since = None
            try:
                for kind, event_id, data in sse_events(resp):
                    if kind == "end":
                        return
                    if kind == "log":
                        for raw in data:
                            yield orjson.loads(raw)
                    if event_id is not None:
                        last_id = event_id
            except (OSError, http.client.HTTPException, ValueError):
                pass
            finally:
                conn.close()
            time.sleep(RECONNECT_PAUSE)


def sse_events(resp: http.client.HTTPResponse) -> Iterator[tuple[str, str | None, list[bytes]]]:
    """(event, id, data lines) of each complete event; an event cut off by a dropped connection is not
    given (so its lines are not printed, and the resume sends them again)."""
    kind: str = "message"
    event_id: str | None = None
    data: list[bytes] = []
    while True:
        raw = resp.readline()
        if not raw:
            return
        if not raw.endswith(b"\n"):
            return  # cut mid-line: the event is incomplete
        line = raw.rstrip(b"\r\n")
        if not line:
            if data or kind != "message":
                yield kind, event_id, data
            kind, event_id, data = "message", None, []
            continue
        if line.startswith(b":"):
            continue
        name, _, value = line.partition(b":")
        value = value[1:] if value.startswith(b" ") else value
        if name == b"event":
            kind = value.decode()
        elif name == b"id":
            event_id = value.decode()
        elif name == b"data":
            data.append(value)


def _error_text(status: int, body: bytes) -> str:
    try:
        doc = orjson.loads(body)
        detail = f"{doc.get('error')}: {doc.get('detail')}"
    except (ValueError, AttributeError):
        detail = body[:200].decode("utf-8", "replace").strip()
    what = {401: "the token was refused", 403: "the token may not read this job", 404: "unknown job"}.get(status)
    return f"{what} ({status} {detail})" if what else f"the aggregator answered {status} ({detail})"
