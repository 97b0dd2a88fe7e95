"""The store URL (`BLAST_LOGS_STORE`): parse it and open the backend it names."""

from __future__ import annotations

import os
import re
import urllib.parse
from pathlib import Path

from aggregator.errors import ConfigError
from aggregator.storage.base import Store
from aggregator.storage.local import LocalStore

# Azure's container naming rules: 3-63 characters, lowercase letters, digits and single inner hyphens.
_AZURE_CONTAINER = re.compile(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}")


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
            from aggregator.storage.azure import AzureStore
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
