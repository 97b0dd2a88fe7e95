"""What the aggregator needs of storage: the `Store` protocol, its error, and the rule for safe keys.

Keys are `/`-separated paths relative to the store's root (a folder or a blob container).
Every backend must make a `put` atomic: a reader sees the old object or the new one, never half.
Every method raises ValueError for an unsafe key or prefix (`check_key`, `check_prefix`) and
StoreError when storage fails; nothing else escapes. A cancelled `put` or `delete` returns only once
the operation has settled (applied or not), so nothing we started writes after its caller has moved
on (for finalize: after its lock was released).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import ParamSpec, Protocol, TypeVar, runtime_checkable

from aggregator.adaptive import AdaptiveLimit
from aggregator.errors import StoreError
from aggregator.fanout import run_bounded
from blastlogs.atomic import TEMP_PREFIX

__all__ = ["TEMP_PREFIX", "DeletesMany", "GetsMany", "PutsMany", "PutsParts", "ReadsRanges", "Store", "StoreError",
           "SweepsTemp", "check_key", "check_prefix", "put_parts", "read_range"]

# LocalStore's in-progress writes start with TEMP_PREFIX; such names are never keys (check_key refuses them).


class Store(Protocol):
    """What the aggregator needs of storage, nothing more."""

    async def get(self, key: str) -> bytes | None:
        """The object's bytes, or None when it does not exist."""

    async def put(self, key: str, data: bytes, *, overwrite: bool = True) -> bool:
        """Write atomically. With overwrite=False, write only if absent; return False if it existed."""

    async def delete(self, key: str) -> None:
        """Remove the object; a missing object is not an error."""

    async def list_keys(self, prefix: str) -> list[str]:
        """Every key that starts with `prefix`, sorted."""

    async def ping(self) -> None:
        """Raise StoreError unless storage answers."""

    async def close(self) -> None:
        """Release connections."""


T = TypeVar("T")
P = ParamSpec("P")


@runtime_checkable
class DeletesMany(Protocol):
    """A store that removes many objects in one call more cheaply than one by one (LocalStore: one
    thread hop per thousand files instead of one per file)."""

    async def delete_many(self, keys: list[str], gate: AdaptiveLimit | None = None) -> None:
        """Remove every object; missing ones are not an error. Settles before a cancel returns. Each request
        holds one of `gate`'s slots (a call that removes many holds one, untimed)."""


async def delete_keys(store: Store, keys: list[str], concurrency: int, gate: AdaptiveLimit | None = None) -> None:
    """Delete every key the cheapest way `store` offers (`delete_many`, else `concurrency` at a time); with
    `gate`, each request also holds one of its slots."""
    if isinstance(store, DeletesMany):
        await store.delete_many(keys, gate)
    else:
        delete = store.delete if gate is None else gated(gate, store.delete)
        await run_bounded(concurrency, (partial(delete, k) for k in keys))


@runtime_checkable
class ReadsRanges(Protocol):
    """A store that reads part of an object (LocalStore, AzureStore): a big object is read a slice at a
    time, never held whole."""

    async def read_range(self, key: str, start: int, length: int) -> tuple[bytes, int] | None:
        """Up to `length` bytes of the object from `start` (fewer at its end, none from its end on) and
        the object's size; None when it does not exist."""


async def read_range(store: Store, key: str, start: int, length: int) -> tuple[bytes, int] | None:
    """`store.read_range` where the store has it; else the whole object read (`get`) and cut."""
    if isinstance(store, ReadsRanges):
        return await store.read_range(key, start, length)
    data = await store.get(key)
    return None if data is None else (data[start:start + length], len(data))


@runtime_checkable
class PutsParts(Protocol):
    """A store that writes an object from parts without joining them (LocalStore): a compaction of a big
    stream holds its old object and its new batches, not also their concatenation."""

    async def put_parts(self, key: str, parts: Sequence[bytes | memoryview], *, overwrite: bool = True) -> bool:
        """`put` of the parts' concatenation."""


async def put_parts(store: Store, key: str, parts: Sequence[bytes | memoryview], *, overwrite: bool = True) -> bool:
    """`store.put_parts` where the store has it; else `put` of the parts joined."""
    if isinstance(store, PutsParts):
        return await store.put_parts(key, parts, overwrite=overwrite)
    return await store.put(key, b"".join(parts), overwrite=overwrite)


@runtime_checkable
class GetsMany(Protocol):
    """A store that reads many small objects in one call more cheaply than one by one (LocalStore: one
    thread hop for all of them; a finalize of 20,000 one-batch streams would otherwise take 20,000)."""

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        """Each object's bytes, or None when it does not exist, in the order of `keys`."""


@runtime_checkable
class PutsMany(Protocol):
    """A store that writes many objects in one call more cheaply than one by one (LocalStore: one thread
    hop per slice of files instead of one per file; a finalize writes a chunk file per 100 lines)."""

    async def put_many(self, items: list[tuple[str, bytes]], concurrency: int,
                       gate: AdaptiveLimit | None = None) -> None:
        """Write (overwrite) every object, at most `concurrency` writes at a time, each also holding one of
        `gate`'s slots (a store that writes them all in one call holds one for the call, untimed); returns once
        every write it started has settled (cancelled too), raising the first failure."""


async def put_keys(store: Store, items: list[tuple[str, bytes]], concurrency: int,
                   gate: AdaptiveLimit | None = None) -> None:
    """Write (overwrite) every object the cheapest way `store` offers (`put_many`, else `concurrency` puts
    at a time); with `gate`, each request also holds one of its slots (a finalize's reads and writes
    share one limit)."""
    if isinstance(store, PutsMany):
        await store.put_many(items, concurrency, gate)
    else:
        put = store.put if gate is None else gated(gate, store.put)
        await run_bounded(concurrency, (partial(put, k, b) for k, b in items))


def gated(gate: AdaptiveLimit, request: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """`request`, each call in one of `gate`'s slots."""

    async def call(*args: P.args, **kwargs: P.kwargs) -> T:
        async with gate.slot():
            return await request(*args, **kwargs)

    return call


@runtime_checkable
class SweepsTemp(Protocol):
    """A store whose interrupted writes can leave temporary files behind (LocalStore)."""

    async def sweep_temp(self, prefix: str, older_than: float) -> int:
        """Remove temporary files under `prefix` last modified over `older_than` seconds ago; how many."""


def check_key(key: str) -> str:
    """Refuse keys that could leave the store's root; callers build keys from validated ids."""
    parts = key.split("/")
    if (not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\x00" in key
            or parts[-1].startswith(TEMP_PREFIX)):
        raise ValueError(f"unsafe storage key {key!r}")
    return key


def check_prefix(prefix: str) -> str:
    """A listing prefix is a key's beginning: "" (everything), "a/b/" (a folder) or "a/b/c" (a name start)."""
    parts = prefix.split("/")
    if prefix and (prefix.startswith("/") or "\x00" in prefix
                   or any(p in ("", ".", "..") for p in parts[:-1]) or parts[-1] in (".", "..")):
        raise ValueError(f"unsafe storage prefix {prefix!r}")
    return prefix
