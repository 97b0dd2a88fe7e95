"""Helpers shared by the aggregator's tests: configs, batch bodies, tokens, stores over both backends.

The fixtures built on them (`kit`, `local_kit`, `store`, `serve`) are in conftest.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from conftest import TEST_ADMIN_TOKEN, TEST_SECRET, Azurite

from aggregator.auth import job_token
from aggregator.config import AggregatorConfig
from aggregator.storage import LocalStore, Store, open_store

JOB = "elb-123"
POD = "blastn-batch-job-7-abc12"


def make_config(**overrides: Any) -> AggregatorConfig:
    base = AggregatorConfig(secret=TEST_SECRET, admin_token=TEST_ADMIN_TOKEN, poll_seconds=0.05,
                            lock_wait=5.0, compact_delay=0.0)
    return dataclasses.replace(base, **overrides)


def ingest_headers(job_id: str = JOB, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {job_token(TEST_SECRET, job_id)}", "Content-Type": "application/json",
            **extra}


def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {TEST_ADMIN_TOKEN}"}


def events(offs: range | list[int], *, ts: float = 1000.0, prefix: str = "line") -> list[dict[str, Any]]:
    """Events whose `line` names their offset, so tests can check each appears once."""
    return [{"off": o, "ts": ts + o / 1000, "line": f"{prefix} {o}"} for o in offs]


def batch(*, job_id: str = JOB, pod: str = POD, container: str = "blast", phase: str = "running",
          seq: int = 0, eof: bool = False, evs: list[dict[str, Any]] | None = None,
          **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"job_id": job_id, "pod": pod, "container": container, "phase": phase,
                            "seq": seq, "eof": eof, "dropped": {"lines": 0, "bytes": 0},
                            "events": evs if evs is not None else []}
    body.update(extra)
    return body


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


class StoreKit:
    """One storage place (a local folder or an Azurite container): the app gets a handle, the test
    inspects through another; an aggregator process reaches it with `url` and `aggregator_env()`."""

    def __init__(self, kind: str, tmp_path: Path, azurite: Azurite | None) -> None:
        self.kind = kind
        self.root = tmp_path / "store"
        self.azurite = azurite
        self.container = "t" + uuid.uuid4().hex[:20]
        self.handles: list[Store] = []

    @property
    def url(self) -> str:
        return f"file://{self.root}" if self.kind == "local" else f"azure://{self.container}"

    def open(self) -> Store:
        if self.kind == "local":
            store: Store = LocalStore(self.root)
        else:
            assert self.azurite is not None
            store = open_store(self.url, azure_connection_string=self.azurite.connection_string)
        return store

    def inspector(self) -> Store:
        store = self.open()
        self.handles.append(store)
        return store

    def aggregator_env(self) -> dict[str, str]:
        """What an aggregator process needs besides `BLAST_LOGS_STORE` to reach this place."""
        if self.azurite is None:
            return {}
        return {"BLAST_LOGS_AZURE_CONNECTION_STRING": self.azurite.connection_string}

    async def close(self) -> None:
        for store in self.handles:
            await store.close()


def on_request(app: web.Application, path: str, event: asyncio.Event) -> None:
    """Set `event` when a request for `path` reaches its handler (past the app's own middleware), so a
    test can wait for "the server is handling it" instead of sleeping. Call before the app starts."""

    @web.middleware
    async def seen(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path == path:
            event.set()
        response: web.StreamResponse = await handler(request)
        return response

    app.middlewares.append(seen)


async def read_tree(store: Store, prefix: str) -> dict[str, bytes]:
    """Every object under `prefix` with its bytes."""
    out: dict[str, bytes] = {}
    for key in await store.list_keys(prefix):
        data = await store.get(key)
        assert data is not None
        out[key] = data
    return out
