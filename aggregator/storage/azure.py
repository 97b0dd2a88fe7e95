"""Azure Blob Storage backend for the `Store` protocol (azure-storage-blob aio).

The only module that imports the Azure SDK: `open_store` imports it lazily, so the shipper and a
local-store aggregator never need the `azure` extra. A connection string is parsed once
(`azure_credentials`), and both the SDK client and the direct putter are built from that one parse.
Timeouts and retries are short on purpose: during an outage the aggregator must answer 503 within
seconds (the shipper retries) rather than hold requests open.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.blob.aio import ContainerClient, LinearRetry

from aggregator.errors import BlobPutError, ConfigError
from aggregator.fanout import finish_even_if_cancelled
from aggregator.storage.azure_credentials import (
    connection_string_secrets,
    parse_connection_string,
    redact,
    url_secrets,
)
from aggregator.storage.azure_put import Auth, Bearer, BlobPutter
from aggregator.storage.base import StoreError, check_key, check_prefix

# Defaults, bounded so that an outage surfaces as StoreError within a few seconds.
CONNECTION_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 20.0
RETRY_TOTAL = 2
RETRY_BACKOFF_S = 1
# A hard ceiling on one store operation, retries and token acquisition included.
OPERATION_TIMEOUT_S = 30.0
# How much of an SDK error message a StoreError keeps (after redaction).
ERROR_DETAIL_CHARS = 300

_CONTAINER_NOT_FOUND = "ContainerNotFound"
T = TypeVar("T")


def describe_failure(exc: BaseException) -> str:
    """A short reason for an SDK or network failure, before redaction."""
    if isinstance(exc, HttpResponseError) and exc.status_code is not None:
        code = f" {_error_code(exc)}" if _error_code(exc) else ""
        return f"HTTP {exc.status_code}{code}"
    if isinstance(exc, BlobPutError) and exc.status is not None:
        return f"HTTP {exc.status}{f' {exc.code}' if exc.code else ''}"
    first_line = (str(exc).strip().splitlines() or [""])[0]
    kind = "cannot reach storage" if isinstance(
        exc, ServiceRequestError | ServiceResponseError | aiohttp.ClientError | OSError
    ) else "storage failed"
    return f"{kind} ({type(exc).__name__}: {first_line})" if first_line else f"{kind} ({type(exc).__name__})"


class AzureStore:
    """A blob container. put-if-absent uses `If-None-Match: *`, so concurrent replicas agree on one writer.

    `put` goes through `BlobPutter` (one signed request, the ingest hot path); everything else
    through the SDK's `client`.
    """

    def __init__(
        self,
        client: ContainerClient,
        putter: BlobPutter,
        *,
        credential: AsyncTokenCredential | None = None,
        secrets: Iterable[str] = (),
        operation_timeout: float = OPERATION_TIMEOUT_S,
    ) -> None:
        self._client = client
        self._putter = putter
        self._credential = credential
        self._secrets = [s for s in secrets if s]
        self._operation_timeout = operation_timeout
        self._container_lock = asyncio.Lock()
        # Bumped each time this object creates the container, so concurrent writers create it once.
        self._container_generation = 0
        self.container = client.container_name

    @classmethod
    def from_connection_string(
        cls,
        connection_string: str,
        container: str,
        *,
        connection_timeout: float = CONNECTION_TIMEOUT_S,
        read_timeout: float = READ_TIMEOUT_S,
        retry_total: int = RETRY_TOTAL,
        operation_timeout: float = OPERATION_TIMEOUT_S,
    ) -> AzureStore:
        """Shared-key or SAS access; Azurite in development and tests."""
        parsed = parse_connection_string(connection_string)
        try:
            client = ContainerClient(
                parsed.account_url, container, credential=parsed.sdk_credential(),
                **_client_options(connection_timeout, read_timeout, retry_total),
            )
        except ValueError:
            # The SDK's message could quote the string; ours never does.
            raise ConfigError("malformed Azure connection string") from None
        putter = _putter(client, parsed.auth(), connection_timeout, read_timeout, retry_total)
        return cls(client, putter, secrets=connection_string_secrets(connection_string),
                   operation_timeout=operation_timeout)

    @classmethod
    def from_account_url(
        cls,
        account_url: str,
        container: str,
        *,
        connection_timeout: float = CONNECTION_TIMEOUT_S,
        read_timeout: float = READ_TIMEOUT_S,
        retry_total: int = RETRY_TOTAL,
        operation_timeout: float = OPERATION_TIMEOUT_S,
        credential: AsyncTokenCredential | None = None,
    ) -> AzureStore:
        """Production: `DefaultAzureCredential` (workload identity, managed identity, az login).

        `credential` replaces it (tests); the store closes it either way.
        """
        if credential is None:
            from azure.identity.aio import DefaultAzureCredential

            credential = DefaultAzureCredential()
        client = ContainerClient(
            account_url, container, credential=credential,
            **_client_options(connection_timeout, read_timeout, retry_total),
        )
        putter = _putter(client, Bearer(credential), connection_timeout, read_timeout, retry_total)
        return cls(client, putter, credential=credential, secrets=url_secrets(account_url),
                   operation_timeout=operation_timeout)

    async def get(self, key: str) -> bytes | None:
        check_key(key)

        async def op() -> bytes | None:
            try:
                downloader = await self._client.download_blob(key)
                return await downloader.readall()
            except ResourceNotFoundError:
                return None

        return await self._run("get", key, op)

    async def read_range(self, key: str, start: int, length: int) -> tuple[bytes, int] | None:
        """Get Blob with a range (`download_blob(offset, length)`); a range from the blob's end on (the
        service answers 416) reads its size from its properties instead."""
        check_key(key)
        if start < 0 or length < 0:
            raise ValueError(f"bad range {start}+{length}")

        async def op() -> tuple[bytes, int] | None:
            try:
                if length == 0:
                    props = await self._client.get_blob_client(key).get_blob_properties()
                    return b"", int(props.size)
                try:
                    downloader = await self._client.download_blob(key, offset=start, length=length)
                except HttpResponseError as e:
                    if e.status_code != 416:
                        raise
                    props = await self._client.get_blob_client(key).get_blob_properties()
                    return b"", int(props.size)
                data = await downloader.readall()
                # `properties.size` is the range's; "bytes {first}-{last}/{blob size}" has the blob's
                return data, int(str(downloader.properties.content_range).rsplit("/", 1)[1])
            except ResourceNotFoundError:
                return None

        return await self._run("get", key, op)

    async def put(self, key: str, data: bytes, *, overwrite: bool = True) -> bool:
        check_key(key)

        async def op() -> bool:
            generation = self._container_generation
            try:
                # A retry after a lost response can find our own write and report False: callers
                # that must know (the finalize lock) read the object back.
                return await self._putter.put(key, data, overwrite=overwrite)
            except BlobPutError as e:
                if e.code != _CONTAINER_NOT_FOUND:
                    raise
            await self._create_container(generation)
            return await self._putter.put(key, data, overwrite=overwrite)

        # A request already sent may still be applied: a cancelled put returns once it has settled.
        return await finish_even_if_cancelled(self._run("put", key, op))

    async def delete(self, key: str) -> None:
        check_key(key)

        async def op() -> None:
            try:
                await self._client.delete_blob(key, delete_snapshots="include")
            except ResourceNotFoundError:
                pass

        await finish_even_if_cancelled(self._run("delete", key, op))

    async def list_keys(self, prefix: str) -> list[str]:
        check_prefix(prefix)

        async def op() -> list[str]:
            try:
                names = [n async for n in self._client.list_blob_names(name_starts_with=prefix or None)]
            except ResourceNotFoundError:
                return []  # no container yet: nothing stored
            return sorted(names)

        return await self._run("list", prefix, op)

    async def ping(self) -> None:
        """Reachable and usable: a missing container is created, as the first put would."""

        async def op() -> None:
            generation = self._container_generation
            try:
                await self._client.get_container_properties()
            except ResourceNotFoundError:
                await self._create_container(generation)

        await self._run("ping", "", op)

    async def close(self) -> None:
        try:
            await self._putter.close()
            await self._client.close()
        finally:
            if self._credential is not None:
                await self._credential.close()

    async def _create_container(self, seen_generation: int) -> None:
        """Create the container once, however many writers found it missing at the same time."""
        async with self._container_lock:
            if self._container_generation != seen_generation:
                return  # another task created it after this one looked
            try:
                await self._client.create_container()
            except ResourceExistsError:
                pass  # another replica won the race
            self._container_generation += 1

    async def _run(self, op_name: str, key: str, op: Callable[[], Awaitable[T]]) -> T:
        """Run one operation under the hard deadline; every storage failure becomes a StoreError."""
        deadline = asyncio.timeout(self._operation_timeout)
        try:
            async with deadline:
                return await op()
        except (AzureError, BlobPutError, aiohttp.ClientError, OSError, TimeoutError) as e:
            if deadline.expired():
                detail = f"no answer within {self._operation_timeout:g}s"
            else:
                detail = redact(describe_failure(e), self._secrets)[:ERROR_DETAIL_CHARS]
            # `from None`: the SDK exception is not chained, so no traceback can carry a credential.
            where = f"{self.container}/{key}" if key else self.container
            raise StoreError(f"azure {op_name} {where}: {detail}") from None


def _error_code(exc: HttpResponseError) -> str | None:
    """The storage error code (e.g. ContainerNotFound) the SDK attaches to its exceptions."""
    code = getattr(exc, "error_code", None)
    # Usually a StorageErrorCode (a str enum, whose str() is its member name): keep the value.
    return str(getattr(code, "value", code)) if code else None


def _client_options(connection_timeout: float, read_timeout: float, retry_total: int) -> dict[str, Any]:
    # The SDK default retry waits 15 s and more between attempts; ours stays within a few seconds.
    return {
        "connection_timeout": connection_timeout,
        "read_timeout": read_timeout,
        "retry_policy": LinearRetry(backoff=RETRY_BACKOFF_S, retry_total=retry_total, random_jitter_range=1),
        # aiohttp's trust_env costs proxy and .netrc look-ups in threads on every request; keep it
        # only where a proxy is configured.
        "use_env_settings": proxy_configured(os.environ),
    }


def _putter(client: ContainerClient, auth: Auth, connection_timeout: float, read_timeout: float,
            retry_total: int) -> BlobPutter:
    """The put path, with the client's URL, API version, timeouts, retries and proxy choice."""
    container_url = urlunsplit(urlsplit(client.url)._replace(query="", fragment=""))
    return BlobPutter(container_url, auth, api_version=client.api_version, connection_timeout=connection_timeout,
                      read_timeout=read_timeout, retry_total=retry_total, retry_backoff=RETRY_BACKOFF_S,
                      trust_env=proxy_configured(os.environ))


def proxy_configured(environ: Mapping[str, str]) -> bool:
    return any(environ.get(name) or environ.get(name.lower())
               for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"))
