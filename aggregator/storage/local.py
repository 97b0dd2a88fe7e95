"""The local-folder backend of `Store` (the embedded default): one file per key under a root folder."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from aggregator.adaptive import AdaptiveLimit, untimed_slot
from aggregator.fanout import finish_even_if_cancelled
from aggregator.storage.base import TEMP_PREFIX, StoreError, check_key, check_prefix
from blastlogs.atomic import write_atomic, write_many_atomic

#: Stored objects are readable by the service's user only (as `tempfile.mkstemp` creates them).
LOCAL_FILE_MODE: Final = 0o600


class LocalStore:
    """A folder on disk. Writes are `blastlogs.atomic.write_atomic`: a temp file in the same folder, fsync,
    then os.replace (or os.link for put-if-absent), then fsync of the folder."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self._root = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).split("/"))

    async def get(self, key: str) -> bytes | None:
        return await asyncio.to_thread(self._get, key)

    def _get(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StoreError(f"read {key}: {e.strerror}") from e

    async def read_range(self, key: str, start: int, length: int) -> tuple[bytes, int] | None:
        return await asyncio.to_thread(self._read_range, key, start, length)

    def _read_range(self, key: str, start: int, length: int) -> tuple[bytes, int] | None:
        if start < 0 or length < 0:
            raise ValueError(f"bad range {start}+{length}")
        try:
            with self._path(key).open("rb") as f:
                size = os.fstat(f.fileno()).st_size
                f.seek(start)
                return f.read(length), size
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StoreError(f"read {key}: {e.strerror}") from e

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        return await asyncio.to_thread(lambda: [self._get(key) for key in keys])

    async def put(self, key: str, data: bytes, *, overwrite: bool = True) -> bool:
        # A thread cannot be stopped: a cancelled put returns only once the write has settled.
        return await finish_even_if_cancelled(asyncio.to_thread(self._put, key, data, overwrite))

    async def put_parts(self, key: str, parts: Sequence[bytes | memoryview], *, overwrite: bool = True) -> bool:
        return await finish_even_if_cancelled(asyncio.to_thread(self._put, key, parts, overwrite))

    def _put(self, key: str, data: bytes | Sequence[bytes | memoryview], overwrite: bool) -> bool:
        path = os.path.join(self._root, check_key(key))  # a checked key is a relative path of plain names
        try:
            if not overwrite and os.path.exists(path):
                return False
            # Put-if-absent links the temp file (link fails if the name exists); an ack means durable.
            try:
                return write_atomic(path, data, mode=LOCAL_FILE_MODE, overwrite=overwrite, temp_prefix=TEMP_PREFIX)
            except FileNotFoundError:  # its folder is new: make it (the common case costs no mkdir)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                return write_atomic(path, data, mode=LOCAL_FILE_MODE, overwrite=overwrite, temp_prefix=TEMP_PREFIX)
        except OSError as e:
            raise StoreError(f"write {key}: {e.strerror}") from e

    async def put_many(self, items: list[tuple[str, bytes]], concurrency: int,
                       gate: AdaptiveLimit | None = None) -> None:
        """Every item `put`, all in one thread hop (`write_many_atomic`): a thread hop and an fsync per file
        cost more than the file (a chatty job's finalize writes 110,000). One thread, not several: files
        of one folder are created one at a time under its lock anyway, and threads waiting for it spin
        (the same wall time on a journaled ext4 with about a quarter less CPU; on ext4 without a
        journal, after mass deletions, 3-7 s against 1.1-1.5 s of system CPU per 11,000 chunk files:
        docs/benchmarks.md, issue 16 sixth round). `concurrency` is for stores that send requests; the
        call holds one of `gate`'s slots, untimed (a batch of files is not one request)."""
        for key, _ in items:
            check_key(key)
        if items:
            async with untimed_slot(gate):
                await finish_even_if_cancelled(asyncio.to_thread(self._put_all, items))

    def _put_all(self, items: list[tuple[str, bytes]]) -> None:
        """The items written together (`write_many_atomic`: one syncfs, not an fsync per file); durable on
        return."""
        paths = [(os.path.join(self._root, key), data) for key, data in items]
        try:
            for folder in {os.path.dirname(path) for path, _ in paths}:
                os.makedirs(folder, exist_ok=True)
            write_many_atomic(paths, mode=LOCAL_FILE_MODE, temp_prefix=TEMP_PREFIX)
        except OSError as e:
            raise StoreError(f"write {len(items)} objects: {e.strerror}") from e

    async def delete(self, key: str) -> None:
        await finish_even_if_cancelled(asyncio.to_thread(self._delete, key))

    def _delete(self, key: str) -> None:
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            pass
        except OSError as e:
            raise StoreError(f"delete {key}: {e.strerror}") from e

    async def delete_many(self, keys: list[str], gate: AdaptiveLimit | None = None) -> None:
        for key in keys:
            check_key(key)
        for start in range(0, len(keys), 1000):
            part = keys[start:start + 1000]
            async with untimed_slot(gate):
                await finish_even_if_cancelled(asyncio.to_thread(self._delete_all, part))

    def _delete_all(self, keys: list[str]) -> None:
        for key in keys:
            self._delete(key)

    async def list_keys(self, prefix: str) -> list[str]:
        return await asyncio.to_thread(self._list_keys, check_prefix(prefix))

    def _list_keys(self, prefix: str) -> list[str]:
        # Walk only the deepest folder the prefix names entirely.
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        base = self.root.joinpath(*folder.split("/")) if folder else self.root
        out: list[str] = []
        try:
            if not base.exists():
                # Nothing stored there yet, unless what blocks the path is a file, not a folder.
                ancestor = base
                while not ancestor.exists() and ancestor != ancestor.parent:
                    ancestor = ancestor.parent
                if not ancestor.is_dir():
                    raise StoreError(f"list {prefix}: {ancestor} is not a folder")
                return []

            def _raise(err: OSError) -> None:
                raise err

            for dirpath, _dirs, files in os.walk(base, onerror=_raise):
                rel = os.path.relpath(dirpath, self.root)
                for name in files:
                    if name.startswith(TEMP_PREFIX):
                        continue
                    key = name if rel == "." else f"{rel.replace(os.sep, '/')}/{name}"
                    if key.startswith(prefix):
                        out.append(key)
        except OSError as e:
            raise StoreError(f"list {prefix}: {e.strerror}") from e
        out.sort()
        return out

    async def sweep_temp(self, prefix: str, older_than: float) -> int:
        """Remove `.tmp-*.part` files under `prefix` older than `older_than` seconds (a crash mid-write
        leaves them; a write in progress is seconds old, never that old)."""
        return await asyncio.to_thread(self._sweep_temp, check_prefix(prefix), older_than)

    def _sweep_temp(self, prefix: str, older_than: float) -> int:
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        base = self.root.joinpath(*folder.split("/")) if folder else self.root
        cutoff = time.time() - older_than
        removed = 0
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                if not (name.startswith(TEMP_PREFIX) and name.endswith(".part")):
                    continue
                path = os.path.join(dirpath, name)
                try:
                    if os.stat(path).st_mtime < cutoff:
                        os.unlink(path)
                        removed += 1
                except FileNotFoundError:
                    continue
                except OSError as e:
                    raise StoreError(f"sweep {prefix}: {e.strerror}") from e
        return removed

    async def ping(self) -> None:
        def _ping() -> None:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                if not os.access(self.root, os.W_OK):
                    raise StoreError(f"{self.root} is not writable")
            except OSError as e:
                raise StoreError(f"{self.root}: {e.strerror}") from e

        await asyncio.to_thread(_ping)

    async def close(self) -> None:
        return None

