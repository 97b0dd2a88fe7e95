"""Which part of the service a storage operation serves (`storage_phase`), and a store that counts
its operations by it (`CountingStore`): `blast_logs_aggregator_storage_operations_total{op,phase}`."""

from __future__ import annotations

from collections.abc import Sequence
from contextvars import ContextVar
from functools import partial

from prometheus_client import Counter

from aggregator.adaptive import AdaptiveLimit
from aggregator.fanout import run_bounded
from aggregator.storage.base import GetsMany, Store, SweepsTemp, delete_keys, put_keys, put_parts, read_range

#: Set by each route (a request runs in its own task, so its own context) and by background compactions.
storage_phase: ContextVar[str] = ContextVar("storage_phase", default="other")
#: Deletes (or gets) at once when the store has no `delete_many` (`get_many`).
DELETES_AT_ONCE = 16


class CountingStore:
    """`inner`, with every operation counted under the current `storage_phase` (a delete of many
    keys counts one per key: one request each on Azure)."""

    def __init__(self, inner: Store, ops: Counter) -> None:
        self.inner = inner
        self.ops = ops

    def _count(self, op: str, n: int = 1) -> None:
        self.ops.labels(op, storage_phase.get()).inc(n)

    async def get(self, key: str) -> bytes | None:
        self._count("get")
        return await self.inner.get(key)

    async def read_range(self, key: str, start: int, length: int) -> tuple[bytes, int] | None:
        self._count("get")  # one request (a ranged one) on Azure
        return await read_range(self.inner, key, start, length)

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        self._count("get", len(keys))
        if isinstance(self.inner, GetsMany):
            return await self.inner.get_many(keys)
        return await run_bounded(DELETES_AT_ONCE, (partial(self.inner.get, k) for k in keys))

    async def put(self, key: str, data: bytes, *, overwrite: bool = True) -> bool:
        self._count("put")
        return await self.inner.put(key, data, overwrite=overwrite)

    async def put_parts(self, key: str, parts: Sequence[bytes | memoryview], *, overwrite: bool = True) -> bool:
        self._count("put")
        return await put_parts(self.inner, key, parts, overwrite=overwrite)

    async def delete(self, key: str) -> None:
        self._count("delete")
        await self.inner.delete(key)

    async def delete_many(self, keys: list[str], gate: AdaptiveLimit | None = None) -> None:
        self._count("delete", len(keys))
        await delete_keys(self.inner, keys, DELETES_AT_ONCE, gate)

    async def put_many(self, items: list[tuple[str, bytes]], concurrency: int,
                       gate: AdaptiveLimit | None = None) -> None:
        self._count("put", len(items))
        await put_keys(self.inner, items, concurrency, gate)

    async def sweep_temp(self, prefix: str, older_than: float) -> int:
        if not isinstance(self.inner, SweepsTemp):
            return 0
        self._count("list")
        return await self.inner.sweep_temp(prefix, older_than)

    async def list_keys(self, prefix: str) -> list[str]:
        self._count("list")
        return await self.inner.list_keys(prefix)

    async def ping(self) -> None:
        await self.inner.ping()

    async def close(self) -> None:
        await self.inner.close()
