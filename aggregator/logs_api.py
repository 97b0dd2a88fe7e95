"""The read routes (docs/protocol.md section 10): a job's logs (a page, or followed as Server-Sent Events),
its streams' state with each phase's live `last_output`, and the viewer page.

Every data route checks a read token (or the admin token) for the job in the path; the viewer page itself
holds no job data and needs none (it asks for the token in the browser and sends it as a header).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from datetime import datetime
from importlib import resources
from typing import Any, Final

import orjson
from aiohttp import web

from aggregator.auth import check_read
from aggregator.config import AggregatorConfig
from aggregator.errors import BadRequest, StoreError
from aggregator.follow import Follower, decode_marks, encode_marks
from aggregator.openapi import LOGS_PATH, STREAMS_PATH, VIEW_PATH
from aggregator.reading import (
    LogEvent,
    Page,
    Selection,
    chunk_events,
    chunk_events_backwards,
    decode_cursor,
    finalized_summary,
    job_exists,
    staged_events,
    staged_events_backwards,
    take_page,
    take_tail,
    view_chunks,
    view_job,
)
from aggregator.storage import Store
from blastlogs.protocol import valid_job_id, valid_k8s_name, valid_phase

log = logging.getLogger("aggregator.read")

#: Events per page: the default and the most a request may ask for (a page is built in memory).
DEFAULT_LIMIT: Final = 1000
MAX_LIMIT: Final = 5000
#: How often a follower lists staging, and how long a quiet follow waits before a heartbeat comment.
FOLLOW_POLL: Final = 0.5
HEARTBEAT: Final = 15.0
#: What a follow's client should wait before reconnecting (SSE `retry:`), in milliseconds.
RETRY_MS: Final = 1000
FORMATS: Final = ("ndjson", "text")
SOURCES: Final = ("auto", "staging", "chunks")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d)$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: float) -> float:
    """`since` as Unix seconds: a duration back from now (`90s`, `10m`, `2h`, `1d`), an RFC 3339 time, or
    Unix seconds."""
    m = _DURATION.match(text)
    if m:
        return now - float(m.group(1)) * _UNIT[m.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise BadRequest("since must be a duration (10m), an RFC 3339 time or Unix seconds") from None
    if when.tzinfo is None:
        raise BadRequest("since needs a time zone (Z or +hh:mm)")
    return when.timestamp()


def _int(query: Any, name: str, lo: int, hi: int) -> int | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    if not raw.isdigit() or not lo <= int(raw) <= hi:
        raise BadRequest(f"{name} must be an integer from {lo} to {hi}")
    return int(raw)


def parse_selection(query: Any, now: float) -> Selection:
    phase, pod, container = query.get("phase") or None, query.get("pod") or None, query.get("container") or None
    if phase is not None and not valid_phase(phase):
        raise BadRequest("phase must match [a-z][a-z0-9_]{0,63}")
    for name, value in (("pod", pod), ("container", container)):
        if value is not None and not valid_k8s_name(value):
            raise BadRequest(f"{name} must be a Kubernetes name")
    since = query.get("since")
    return Selection(phase, pod, container, parse_since(since, now) if since else None,
                     _int(query, "position", 0, 2**62))


def wants_follow(request: web.Request) -> bool:
    flag = request.query.get("follow", "").lower()
    if flag in ("1", "true", "yes"):
        return True
    if flag in ("", "0", "false", "no"):
        return "text/event-stream" in request.headers.get("Accept", "")
    raise BadRequest("follow must be 1 or 0")


def _check_job(request: web.Request, cfg: AggregatorConfig) -> str:
    job_id = request.match_info["job_id"]
    check_read(request.headers.get("Authorization"), cfg.secret, cfg.admin_token, job_id)
    if not valid_job_id(job_id):
        raise BadRequest("job id must match [A-Za-z0-9][A-Za-z0-9._-]{0,127}")
    return job_id


def render(events: list[LogEvent], fmt: str, prefix: bool) -> bytes:
    if fmt == "text":
        return b"".join(
            (f"{e.pod}/{e.container} {e.line}\n" if prefix else e.line + "\n").encode("utf-8", "replace")
            for e in events)
    return b"".join(orjson.dumps(e.doc()) + b"\n" for e in events)


def sse(event: str, data: list[bytes], event_id: str | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return (head + f"event: {event}\n").encode() + b"".join(b"data: " + d + b"\n" for d in data) + b"\n"


class ReadHandlers:
    """The read routes over the app's store."""

    def __init__(self, config: AggregatorConfig, store: Callable[[], Store],
                 draining: Callable[[], bool] = lambda: False) -> None:
        self.config = config
        self.store = store
        self.draining = draining
        self.poll = FOLLOW_POLL
        self.heartbeat = HEARTBEAT

    async def logs(self, request: web.Request) -> web.StreamResponse:
        cfg = self.config
        job_id = _check_job(request, cfg)
        q = request.query
        sel = parse_selection(q, time.time())
        fmt = q.get("format", "ndjson")
        source = q.get("source", "auto")
        if fmt not in FORMATS:
            raise BadRequest("format must be ndjson or text")
        if source not in SOURCES:
            raise BadRequest("source must be auto, staging or chunks")
        limit = _int(q, "limit", 1, MAX_LIMIT) or DEFAULT_LIMIT
        tail = _int(q, "tail", 0, MAX_LIMIT)
        store = self.store()
        await job_exists(store, job_id)
        if wants_follow(request):
            last_id = request.headers.get("Last-Event-ID") or q.get("last_event_id")
            marks = decode_marks(last_id) if last_id else None
            return await self._follow(request, Follower(store, cfg, job_id, sel, marks), tail)
        cursor = decode_cursor(q["cursor"]) if q.get("cursor") else None
        page = await self._page(store, job_id, sel, source, cursor, limit, tail)
        resp = web.Response(body=render(page.events, fmt, q.get("prefix") in ("1", "true")),
                            content_type="application/x-ndjson" if fmt == "ndjson" else "text/plain",
                            charset="utf-8")
        if page.cursor is not None:
            resp.headers["X-Cursor"] = page.cursor
        resp.headers["X-More"] = "true" if page.more else "false"
        resp.headers["Cache-Control"] = "no-store"
        return resp

    async def _page(self, store: Store, job_id: str, sel: Selection, source: str,
                    cursor: tuple[Any, ...] | None, limit: int, tail: int | None) -> Page:
        if source == "chunks" and sel.position is not None:
            raise BadRequest("position reads staging (chunks hold no positions); not with source=chunks")
        summary = None if source == "staging" or sel.position is not None else await finalized_summary(store, job_id)
        if source == "chunks" and summary is None:
            raise BadRequest("the job is not finalized: no chunks to read (source=staging or auto)")
        if cursor is not None:
            summary = summary if cursor[0] == "c" else None
        if summary is not None:
            chunks = await view_chunks(store, job_id, summary)
            if tail is not None:
                return await take_tail(chunk_events_backwards(chunks, sel), tail)
            return await take_page(chunk_events(chunks, sel, cursor), limit)
        view = await view_job(store, self.config, job_id)
        if tail is not None:
            return await take_tail(staged_events_backwards(view, sel), tail)
        return await take_page(staged_events(view, sel, cursor), limit)

    async def _follow(self, request: web.Request, follower: Follower, tail: int | None) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        await resp.write(f"retry: {RETRY_MS}\n\n".encode())
        last_write = time.monotonic()

        async def send(piece: list[LogEvent]) -> None:
            nonlocal last_write
            await resp.write(sse("log", [orjson.dumps(e.doc()) for e in piece], encode_marks(follower.marks)))
            last_write = time.monotonic()

        try:
            async for piece in follower.backlog(tail):
                await send(piece)
            while not follower.ended():
                await asyncio.sleep(self.poll)
                if self.draining() or request.transport is None or request.transport.is_closing():
                    # Gone, or this replica is shutting down: the client resumes (elsewhere) from its last id.
                    return resp
                try:
                    async for piece in follower.poll():
                        await send(piece)
                except StoreError as e:
                    log.warning("follow: storage failed, retrying", extra={"fields": {"error": str(e)}})
                if time.monotonic() - last_write >= self.heartbeat:
                    await resp.write(b": heartbeat\n\n")
                    last_write = time.monotonic()
            await resp.write(sse("end", [orjson.dumps({"streams": len(follower.eof)})], encode_marks(follower.marks)))
        except (ConnectionResetError, ConnectionError):
            return resp
        await resp.write_eof()
        return resp

    async def streams(self, request: web.Request) -> web.Response:
        cfg = self.config
        job_id = _check_job(request, cfg)
        store = self.store()
        await job_exists(store, job_id)
        view = await view_job(store, cfg, job_id)
        summary = await finalized_summary(store, job_id)
        streams = [{"pod": i.pod, "container": i.container, "phases": i.phases, "lines": i.lines,
                    "last_position": i.last_position, "eof": i.eof, "exit_code": i.exit_code,
                    "last_activity": i.last_ts}
                   for _, i in sorted(view.info.items())]
        doc = {"job_id": job_id, "finalized": summary is not None, "complete": view.plan.complete,
               "streams": streams, "steps": view.plan.steps}
        return web.Response(body=orjson.dumps(doc), content_type="application/json",
                            headers={"Cache-Control": "no-store"})

    async def view(self, request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        if not valid_job_id(job_id):
            raise BadRequest("job id must match [A-Za-z0-9][A-Za-z0-9._-]{0,127}")
        page = resources.files("aggregator").joinpath("viewer.html").read_bytes()
        resp = web.Response(body=page, content_type="text/html", charset="utf-8")
        resp.headers["Content-Security-Policy"] = ("default-src 'none'; script-src 'self' 'unsafe-inline'; "
                                                   "style-src 'unsafe-inline'; connect-src 'self'; img-src 'self'")
        resp.headers["Referrer-Policy"] = "no-referrer"
        resp.headers["Cache-Control"] = "no-store"
        return resp


READ_HANDLERS = web.AppKey("read_handlers", ReadHandlers)


def add_read_routes(app: web.Application, config: AggregatorConfig, store: Callable[[], Store],
                    draining: Callable[[], bool]) -> None:
    handlers = ReadHandlers(config, store, draining)
    app[READ_HANDLERS] = handlers
    app.router.add_get(LOGS_PATH, handlers.logs)
    app.router.add_get(STREAMS_PATH, handlers.streams)
    app.router.add_get(VIEW_PATH, handlers.view)
