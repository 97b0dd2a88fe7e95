"""One storage interface, two backends: a local folder (embedded default) and Azure Blob Storage.

Keys are `/`-separated paths relative to the store's root (a folder or a blob container).
Every backend must make a `put` atomic: a reader sees the old object or the new one, never half.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path
from typing import Protocol


class StoreError(Exception):
    """Storage is unreachable or failed; the request may be retried later (HTTP 503)."""


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


def check_key(key: str) -> str:
    """Refuse keys that could leave the store's root; callers build keys from validated ids."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\x00" in key:
        raise ValueError(f"unsafe storage key {key!r}")
    return key


class LocalStore:
    """A folder on disk. Writes go to a temp file in the same folder, fsync, then os.replace."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()

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

    async def put(self, key: str, data: bytes, *, overwrite: bool = True) -> bool:
        return await asyncio.to_thread(self._put, key, data, overwrite)

    def _put(self, key: str, data: bytes, overwrite: bool) -> bool:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not overwrite and path.exists():
                return False
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".part")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                if overwrite:
                    os.replace(tmp, path)
                else:
                    # link() fails if the name exists: put-if-absent without a race.
                    try:
                        os.link(tmp, path)
                    except FileExistsError:
                        return False
                    finally:
                        os.unlink(tmp)
            except BaseException:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise
            return True
        except OSError as e:
            raise StoreError(f"write {key}: {e.strerror}") from e

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._delete, key)

    def _delete(self, key: str) -> None:
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            pass
        except OSError as e:
            raise StoreError(f"delete {key}: {e.strerror}") from e

    async def list_keys(self, prefix: str) -> list[str]:
        return await asyncio.to_thread(self._list_keys, prefix)

    def _list_keys(self, prefix: str) -> list[str]:
        # Walk only the deepest folder the prefix names entirely.
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        base = self.root.joinpath(*folder.split("/")) if folder else self.root
        out: list[str] = []
        try:
            for dirpath, _dirs, files in os.walk(base):
                rel = os.path.relpath(dirpath, self.root)
                for name in files:
                    if name.startswith(".tmp-"):
                        continue
                    key = name if rel == "." else f"{rel.replace(os.sep, '/')}/{name}"
                    if key.startswith(prefix):
                        out.append(key)
        except OSError as e:
            raise StoreError(f"list {prefix}: {e.strerror}") from e
        out.sort()
        return out

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
