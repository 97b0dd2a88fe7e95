"""Test support for the shipper: a recording aggregator stand-in (a real aiohttp server that answers
like the aggregator and can be told to fail) and a way to run `blast-log-shipper run` as a process."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import signal
import ssl
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import orjson
from aiohttp import web
from paths import ROOT

JOB_ID = "elb-test-1"
POD = "blast-pod-1"
TOKEN = "elb-test-1.not-checked-by-the-recorder"

Action = int | str  # an HTTP status, or "drop" to close the connection without an answer


@dataclass
class Recorder:
    """Answers POST /v1/ingest; `script` actions are used first, then `default`."""

    script: list[Action] = field(default_factory=list)
    default: Action = 200
    retry_after: str | None = None
    requests: list[tuple[float, Action, dict[str, Any]]] = field(default_factory=list)
    accepted: list[dict[str, Any]] = field(default_factory=list)
    encodings: list[str] = field(default_factory=list)
    runner: web.AppRunner | None = None
    url: str = ""
    ssl_context: ssl.SSLContext | None = None  # serve https (as https://localhost:PORT)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        if raw[:2] == b"\x1f\x8b":  # aiohttp inflates gzip bodies itself; this is for other servers
            raw = gzip.decompress(raw)
        self.encodings.append(request.headers.get("Content-Encoding", ""))
        body = orjson.loads(raw)
        assert request.headers["Authorization"] == f"Bearer {TOKEN}"
        action = self.script.pop(0) if self.script else self.default
        self.requests.append((time.monotonic(), action, body))
        if action == "drop":
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=200)
        if action == 200:
            self.accepted.append(body)
            return web.json_response({"accepted": len(body["events"]), "duplicate": False})
        headers = {"Retry-After": self.retry_after} if self.retry_after else {}
        return web.json_response({"error": f"e{action}", "detail": "told to fail"}, status=int(action),
                                 headers=headers)

    async def start(self) -> Recorder:
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_post("/v1/ingest", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=self.ssl_context)
        await site.start()
        port = self.runner.addresses[0][1]
        self.url = f"https://localhost:{port}" if self.ssl_context else f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def batches(self, container: str) -> list[dict[str, Any]]:
        return [b for b in self.accepted if b["container"] == container]

    def sent(self, container: str) -> list[dict[str, Any]]:
        """The accepted batches of one shipper run in sending order (by `seq`): with two batches on
        the wire, the second may be accepted before the first."""
        return sorted(self.batches(container), key=lambda b: int(b["seq"]))

    def lines(self, container: str) -> list[str]:
        """Accepted lines by offset, each offset once; fails on two different lines at one offset."""
        by_off: dict[int, str] = {}
        for batch in self.batches(container):
            for ev in batch["events"]:
                old = by_off.setdefault(ev["off"], ev["line"])
                assert old == ev["line"], f"off {ev['off']}: {old!r} vs {ev['line']!r}"
        return [by_off[k] for k in sorted(by_off)]

    def eof(self, container: str) -> bool:
        return any(b["eof"] for b in self.batches(container))


@dataclass
class Shipper:
    proc: asyncio.subprocess.Process
    log_path: Path

    async def wait(self, limit: float = 60) -> int:
        return await asyncio.wait_for(self.proc.wait(), limit)

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    async def stop(self, limit: float = 60) -> int:
        """SIGTERM (the drain) and the exit status."""
        self.signal(signal.SIGTERM)
        return await self.wait(limit)

    async def started(self) -> None:
        """Wait until the signal handlers are in place (the startup log line is written after)."""
        await eventually(lambda: any(r.get("msg") == "shipper started" for r in self.log()),
                         what="shipper start")

    def log(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_bytes().splitlines():
            try:
                out.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                out.append({"raw": line.decode(errors="replace")})
        return out


async def start_shipper(volume: Path, urls: Iterable[str], *args: str, token: str = TOKEN,
                        job_id: str = JOB_ID, preexec_fn: Callable[[], object] | None = None,
                        **env: str) -> Shipper:
    full_env = dict(os.environ)
    full_env.update({
        "PYTHONPATH": str(ROOT),
        "BLAST_LOGS_DIR": str(volume),
        "BLAST_LOGS_AGGREGATOR_URL": ",".join(urls),
        "BLAST_LOGS_TOKEN": token,
        "BLAST_LOGS_JOB_ID": job_id,
        "BLAST_LOGS_POD": POD,
        "BLAST_LOGS_NAMESPACE": "default",
        "BLAST_LOGS_PHASE": "running",
        "BLAST_LOGS_METRICS_PORT": "0",
        "BLAST_LOGS_POLL_INTERVAL": "0.05",
        "BLAST_LOGS_LINGER": "0.1",
        "BLAST_LOGS_BACKOFF_BASE": "0.05",
        "BLAST_LOGS_BACKOFF_MAX": "0.5",
    })
    full_env.update(env)
    log_path = volume.parent / f"shipper-{time.monotonic_ns()}.log"
    out = _open_for_child(log_path)
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "shipper", "run", *args, env=full_env, stdout=out,
            stderr=asyncio.subprocess.STDOUT, preexec_fn=preexec_fn)
    finally:
        out.close()
    return Shipper(proc, log_path)


@contextlib.asynccontextmanager
async def shipping(volume: Path, urls: Iterable[str], *args: str, **env: str) -> AsyncIterator[Shipper]:
    """`start_shipper`, killed on the way out if the test did not stop it."""
    shipper = await start_shipper(volume, urls, *args, **env)
    try:
        yield shipper
    finally:
        if shipper.proc.returncode is None:
            shipper.proc.kill()
            await shipper.proc.wait()


def _open_for_child(path: Path) -> BinaryIO:
    return open(path, "wb")


def append(path: Path, data: bytes) -> None:
    """Append like a container's writer does (sync: tests call it between awaits)."""
    with open(path, "ab") as f:
        f.write(data)


async def eventually(check: Any, limit: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
