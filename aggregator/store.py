"""One storage interface, two backends: a local folder (embedded default) and Azure Blob Storage.

Keys are `/`-separated paths relative to the store's root (a folder or a blob container).
Every backend must make a `put` atomic: a reader sees the old object or the new one, never half.
Every method raises ValueError for an unsafe key or prefix (`check_key`, `check_prefix`) and
StoreError when storage fails; nothing else escapes.
"""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
import urllib.parse
from pathlib import Path
from typing import Protocol

from aggregator.errors import ConfigError, StoreError

__all__ = ["LocalStore", "Store", "StoreError", "check_key", "check_prefix", "open_store"]

#: LocalStore's in-progress writes start with this; such names are never keys (check_key refuses them).
TEMP_PREFIX = ".tmp-"
# Azure's container naming rules: 3-63 characters, lowercase letters, digits and single inner hyphens.
_AZURE_CONTAINER = re.compile(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}")


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
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TEMP_PREFIX, suffix=".part")
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
            _fsync_dir(path.parent)  # the new name survives a crash: an ack means durable
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


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_store(
    url: str,
    *,
    azure_account_url: str | None = None,
    azure_connection_string: str | None = None,
) -> Store:
    """The store `BLAST_LOGS_STORE` names: `file:///abs/path`, `file:rel/path` or `azure://<container>`.

    Raises ConfigError (a ValueError), with a message fit for an operator, for anything else.
    """
    if url.startswith("file:"):
        return LocalStore(local_path(url))
    if url.startswith("azure://"):
        container = azure_container_name(url)
        if azure_account_url and azure_connection_string:
            raise ConfigError("set only one of BLAST_LOGS_AZURE_ACCOUNT_URL and BLAST_LOGS_AZURE_CONNECTION_STRING")
        # Lazily: only an Azure-backed aggregator needs the SDK (the `azure` extra).
        try:
            from aggregator.azure_store import AzureStore
        except ImportError as e:
            raise ConfigError(f"store {url!r} needs the Azure SDK: pip install 'blast-logs[azure]' ({e})") from None

        if azure_connection_string:
            return AzureStore.from_connection_string(azure_connection_string, container)
        if azure_account_url:
            if not azure_account_url.startswith(("https://", "http://")):
                raise ConfigError(f"Azure account URL must start with https:// (got {azure_account_url.split('?')[0]!r})")
            return AzureStore.from_account_url(azure_account_url, container)
        raise ConfigError(f"store {url!r} needs BLAST_LOGS_AZURE_ACCOUNT_URL or BLAST_LOGS_AZURE_CONNECTION_STRING")
    raise ConfigError(
        f"unsupported store {url!r}: use file:///abs/path, file:rel/path (relative to the working directory) "
        "or azure://<container>"
    )


def local_path(url: str) -> Path:
    """`file:///abs/path` (a URL, percent-decoded) or `file:rel/path` (a literal path from the working directory)."""
    rest = url.removeprefix("file:")
    if rest.startswith("//"):
        host, slash, path = rest[2:].partition("/")
        if host not in ("", "localhost"):
            raise ConfigError(f"store {url!r}: a file URL names a local folder, not host {host!r}")
        path = urllib.parse.unquote(slash + path)
    else:
        path = rest
    if not path or path == "/" or "\x00" in path:
        raise ConfigError(f"store {url!r}: no usable folder (use file:///abs/path or file:rel/path)")
    return Path.cwd() / path if not os.path.isabs(path) else Path(path)


def azure_container_name(url: str) -> str:
    """The container of `azure://<container>`, checked against Azure's naming rules."""
    name = url.removeprefix("azure://").rstrip("/")
    if not _AZURE_CONTAINER.fullmatch(name):
        raise ConfigError(
            f"store {url!r}: {name!r} is not a valid Azure container name "
            "(3-63 characters: lowercase letters, digits and hyphens, starting and ending with a letter or digit, "
            "no two hyphens in a row)"
        )
    return name
