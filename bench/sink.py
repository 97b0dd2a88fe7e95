"""A counting HTTP sink for the shipper benchmarks: it answers like the aggregator and stores nothing.

    .venv/bin/python bench/sink.py [--port 0] [--delay 0]

Routes:
- `POST /v1/ingest`: the ingest protocol (gzip allowed); answers 200 `{"accepted": n,
  "duplicate": false}` and counts batches, events, body bytes, eof batches and the lines and bytes
  of `dropped` reports (read from the header, before the events). So that the sink
  costs little CPU beside the measured shipper, events are counted without parsing (each has
  one `"line":` member, and inside a JSON string every quote is escaped); `--parse`
  (and any body holding `LIVE ` lines) parses it whole and also counts line characters.
- `POST /syslog`: syslog-ng's `http()` batches: a JSON array of objects, or `{"events": [...]}`,
  each with a `line` (or `MESSAGE`); counted the same way.
- `POST /fluent-bit`: Fluent Bit's http output with `Format json`: a JSON array of objects
  `{"date": <float>, "log": LINE}` (tail without a parser); counted by the `"log":` members.
- `POST /raw`: any body, streamed; counts bytes and newlines (the `curl --data-binary` limit).
- `GET /stats`: the counters as JSON, with `last_event` (Unix time of the last request that
  brought events) and, when lines carry `LIVE <unix ts> ...`, the lag from that ts to the receipt
  (`lag_p50`, `lag_p99`, `lag_max`, `lag_n`).
- `POST /reset`: zero the counters. `POST /delay?seconds=S`: wait S seconds before each answer.

Prints `listening http://127.0.0.1:PORT` on stdout once it serves. The lag is measured at the
moment the sink answers, i.e. when the sender's batch is acknowledged.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import re
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Final

import orjson
from aiohttp import web

LIVE_PREFIX: Final = "LIVE "
LIVE_BYTES: Final = b'"LIVE '
#: Every event has a `line` member (the batch header has none; `dropped` has `lines`).
EVENT_KEY: Final = b'"line":'
#: Fluent Bit's tail input puts each line under `log` (its http output adds a `date` member).
FLUENT_BIT_KEY: Final = b'"log":'
INGEST_EOF: Final = b'"eof":true'
#: The ingest body's header ends where its events begin (shipper.batch encodes it first).
INGEST_EVENTS: Final = b',"events":['
INGEST_DROPPED: Final = re.compile(rb'"dropped":\{(?:"off":\d+,)?"lines":(\d+),"bytes":(\d+)')
MAX_BODY: Final = 64 * 1024 * 1024


@dataclass
class Counters:
    requests: int = 0
    events: int = 0
    body_bytes: int = 0
    line_chars: int = 0
    eof: int = 0
    #: lines and bytes of the `dropped` reports (re-sent reports counted again)
    dropped_lines: int = 0
    dropped_bytes: int = 0
    bad: int = 0
    raw_bytes: int = 0
    raw_lines: int = 0
    first_event: float = 0.0
    last_event: float = 0.0
    lags: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        lags = sorted(out.pop("lags"))
        out["lag_n"] = len(lags)
        if lags:
            out["lag_p50"] = statistics.median(lags)
            out["lag_p99"] = lags[min(len(lags) - 1, int(len(lags) * 0.99))]
            out["lag_max"] = lags[-1]
        return out


class Sink:
    def __init__(self, delay: float = 0.0, parse: bool = False) -> None:
        self.c = Counters()
        self.delay = delay
        self.parse = parse

    def _count(self, raw: bytes, lines: list[str], eof: bool) -> None:
        now = time.time()
        c = self.c
        c.requests += 1
        c.body_bytes += len(raw)
        if lines:
            c.events += len(lines)
            c.line_chars += sum(map(len, lines))
            c.first_event = c.first_event or now
            c.last_event = now
            if lines[0].startswith(LIVE_PREFIX) or lines[-1].startswith(LIVE_PREFIX):
                for line in lines:
                    if line.startswith(LIVE_PREFIX):
                        try:
                            c.lags.append(now - float(line[5:line.index(" ", 5)]))
                        except ValueError:
                            pass
        if eof:
            c.eof += 1

    def _count_fast(self, raw: bytes, key: bytes, eof: bool) -> int:
        """Events counted without parsing: `key` (a quoted member name) occurs once per event,
        as every quote inside a JSON string is escaped."""
        n = raw.count(key)
        now = time.time()
        c = self.c
        c.requests += 1
        c.body_bytes += len(raw)
        if n:
            c.events += n
            c.first_event = c.first_event or now
            c.last_event = now
        if eof:
            c.eof += 1
        return n

    async def _body(self, request: web.Request) -> bytes:
        raw = await request.read()
        if request.headers.get("Content-Encoding", "").lower() == "gzip":
            raw = gzip.decompress(raw)
        return raw

    async def ingest(self, request: web.Request) -> web.Response:
        raw = await self._body(request)
        if self.parse or LIVE_BYTES in raw:
            try:
                body = orjson.loads(raw)
                lines = [e["line"] for e in body["events"]]
                eof = bool(body.get("eof"))
            except (orjson.JSONDecodeError, KeyError, TypeError):
                self.c.bad += 1
                return web.json_response({"error": "malformed", "detail": "not an ingest body"}, status=400)
            self._count(raw, lines, eof)
            n = len(lines)
        else:
            n = self._count_fast(raw, EVENT_KEY, INGEST_EOF in raw)
        m = INGEST_DROPPED.search(raw, 0, max(raw.find(INGEST_EVENTS), 0))
        if m:
            self.c.dropped_lines += int(m.group(1))
            self.c.dropped_bytes += int(m.group(2))
        if self.delay:
            await asyncio.sleep(self.delay)
        return web.Response(body=orjson.dumps({"accepted": n, "duplicate": False}),
                            content_type="application/json")

    async def syslog(self, request: web.Request) -> web.Response:
        return await self._json_batch(request, EVENT_KEY, ("line", "MESSAGE"))

    async def fluent_bit(self, request: web.Request) -> web.Response:
        return await self._json_batch(request, FLUENT_BIT_KEY, ("log",))

    async def _json_batch(self, request: web.Request, key: bytes, names: tuple[str, ...]) -> web.Response:
        """A JSON array of objects (or `{"events": [...]}`), each holding its line under the first
        of `names` it has; counted by `key` without parsing unless `--parse` or `LIVE ` lines."""
        raw = await self._body(request)
        if not (self.parse or LIVE_BYTES in raw):
            n = self._count_fast(raw, key, False)
            if self.delay:
                await asyncio.sleep(self.delay)
            return web.json_response({"accepted": n})
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            try:  # syslog-ng and Fluent Bit may pass invalid UTF-8 through
                body = orjson.loads(raw.decode("utf-8", "replace"))
            except orjson.JSONDecodeError:
                self.c.bad += 1
                return web.json_response({"error": "malformed"}, status=400)
        items = body.get("events", []) if isinstance(body, dict) else body
        lines = [_line_of(e, names) for e in items]
        self._count(raw, lines, False)
        if self.delay:
            await asyncio.sleep(self.delay)
        return web.json_response({"accepted": len(lines)})

    async def raw(self, request: web.Request) -> web.Response:
        nbytes = nlines = 0
        async for piece in request.content.iter_chunked(1 << 20):
            nbytes += len(piece)
            nlines += piece.count(b"\n")
        self.c.raw_bytes += nbytes
        self.c.raw_lines += nlines
        self.c.last_event = time.time()
        return web.json_response({"bytes": nbytes, "lines": nlines})

    async def stats(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(self.c.summary()), content_type="application/json")

    async def reset(self, request: web.Request) -> web.Response:
        self.c = Counters()
        return web.json_response({"reset": True})

    async def set_delay(self, request: web.Request) -> web.Response:
        self.delay = float(request.query.get("seconds", "0"))
        return web.json_response({"delay": self.delay})

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post("/v1/ingest", self.ingest)
        app.router.add_post("/syslog", self.syslog)
        app.router.add_post("/fluent-bit", self.fluent_bit)
        app.router.add_post("/raw", self.raw)
        app.router.add_get("/stats", self.stats)
        app.router.add_post("/reset", self.reset)
        app.router.add_post("/delay", self.set_delay)
        return app


def _line_of(event: Any, names: tuple[str, ...]) -> str:
    if not isinstance(event, dict):
        return str(event)
    for name in names:
        if name in event:
            return str(event[name])
    return ""


async def ingest_on_loopback(handler: Any, max_body: int) -> tuple[web.AppRunner, str]:
    """`handler` answering `POST /v1/ingest` in this process, on a free loopback port: the runner (to clean
    up) and the URL for the shipper (scripts that keep every event in memory run their own recorder so)."""
    app = web.Application(client_max_size=max_body)
    app.router.add_post("/v1/ingest", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def serve(host: str, port: int, delay: float, parse: bool) -> None:
    runner = web.AppRunner(Sink(delay, parse).app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=512)
    await site.start()
    bound = runner.addresses[0][1]
    print(f"listening http://{host}:{bound}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds to wait before each answer")
    parser.add_argument("--parse", action="store_true",
                        help="parse every body (validates the JSON and counts line characters)")
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve(args.host, args.port, args.delay, args.parse))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
