"""`JobLock`: one finalize of a job at a time, across replicas, held in storage itself."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from types import TracebackType
from typing import Any

import orjson

from aggregator.errors import LockBusy, StoreError
from aggregator.storage import Store
from aggregator.storage.layout import lock_key

log = logging.getLogger("aggregator.finalize")


class JobLock:
    """`_staging/_finalize.lock`: put-if-absent with an expiry, renewed while held, taken over once stale.

    Takeover of a stale lock is delete-then-create, re-checked by reading the lock back; two replicas
    racing for one stale lock can very rarely both proceed, and then still write the same bytes as long
    as staging does not change meanwhile.

    The TTL is short (seconds) so a dead replica's lock soon goes stale; the holder renews it every
    `renew` seconds (at most a third of the TTL). A holder that finds its lock gone, or could not renew
    it before its own expiry, cancels the task inside `async with` (whose writes settle first) and
    the block raises StoreError: it must not go on writing once another replica may hold the lock.
    """

    def __init__(self, store: Store, job_id: str, *, ttl: float, wait: float, poll: float,
                 renew: float | None = None) -> None:
        self.store = store
        self.key = lock_key(job_id)
        self.ttl = ttl
        self.renew = min(renew, ttl / 3) if renew is not None else ttl / 3
        self.wait = wait
        self.poll = poll
        self.owner = uuid.uuid4().hex
        self.lost = False
        #: whether the lock was held by another finalize when this one first asked for it
        self.waited = False
        self._valid_until = 0.0  # monotonic: our last written expiry, by our own clock
        self._holder: asyncio.Task[Any] | None = None
        self._renewer: asyncio.Task[None] | None = None

    def _body(self) -> bytes:
        return orjson.dumps({"owner": self.owner, "expires": time.time() + self.ttl})

    def _is_ours(self, data: bytes | None) -> bool:
        return data is not None and _lock_field(data, "owner") == self.owner

    async def __aenter__(self) -> JobLock:
        deadline = time.monotonic() + self.wait
        while True:
            written = time.monotonic()
            if await self.store.put(self.key, self._body(), overwrite=False):
                if self._is_ours(await self.store.get(self.key)):
                    break
                self.waited = True
            else:
                self.waited = True  # held by another finalize (maybe a dead one's)
                held = await self.store.get(self.key)
                if held is not None and _is_stale(held):
                    # Delete only the very lock we judged stale, then race for a fresh one at once.
                    if await self.store.get(self.key) == held:
                        log.warning("taking over a stale finalize lock", extra={"fields": {"key": self.key}})
                        await self.store.delete(self.key)
                    continue
                if held is None:
                    continue
            if time.monotonic() >= deadline:
                raise LockBusy("another finalize of this job is still running")
            await asyncio.sleep(self.poll)
        self._valid_until = written + self.ttl
        self._holder = asyncio.current_task()
        self._renewer = asyncio.create_task(self._renew())
        return self

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.renew)
            started = time.monotonic()
            try:
                if not self._is_ours(await self.store.get(self.key)):
                    self._lose("the finalize lock was taken over")
                    return
                await self.store.put(self.key, self._body(), overwrite=True)
                self._valid_until = started + self.ttl
            except StoreError as e:
                log.warning("finalize lock renewal failed", extra={"fields": {"key": self.key, "error": str(e)}})
                if time.monotonic() + self.renew >= self._valid_until:
                    self._lose("the finalize lock could not be renewed before it expired")
                    return

    def _lose(self, why: str) -> None:
        log.error(why, extra={"fields": {"key": self.key}})
        self.lost = True
        if self._holder is not None:
            self._holder.cancel(why)

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        cancelled = isinstance(e, asyncio.CancelledError)
        try:
            await self._release()
        except asyncio.CancelledError:
            if not self.lost:
                raise
            cancelled = True  # our own cancel arrived after the block had already ended
        if self.lost and cancelled and self._holder is not None:
            self._holder.uncancel()
            raise StoreError(f"finalize stopped: lost its lock {self.key}") from None

    async def _release(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.wait({self._renewer})  # a cancel of our own still propagates
        try:
            if self._is_ours(await self.store.get(self.key)):
                await self.store.delete(self.key)
        except StoreError as err:
            # It expires by itself; the next finalize takes it over.
            log.warning("finalize lock release failed", extra={"fields": {"key": self.key, "error": str(err)}})


def _lock_field(data: bytes, name: str) -> Any:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return obj.get(name) if isinstance(obj, dict) else None


def _is_stale(data: bytes) -> bool:
    expires = _lock_field(data, "expires")
    if isinstance(expires, bool) or not isinstance(expires, int | float):
        return True
    return expires < time.time()
