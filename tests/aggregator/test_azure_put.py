"""BlobPutter, the direct Put Blob path: Shared Key and SAS against Azurite, bearer tokens against a
recording server (no token service can run here)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web
from azure.core.credentials import AccessToken
from azure.storage.blob import ContainerSasPermissions, generate_container_sas

from aggregator.errors import BlobPutError
from aggregator.storage import StoreError
from aggregator.storage.azure import AzureStore
from aggregator.storage.azure_put import STORAGE_SCOPE, Bearer, BlobPutter

API_VERSION = "2025-11-05"


# --- Azurite: Shared Key and SAS ------------------------------------------------------------------


@pytest.mark.azure
@pytest.mark.parametrize("key", ["job/a b+c%d.json", "job/ünï/ço de.json", "job/x~y_z-1.2.json"])
async def test_keys_needing_escapes_round_trip(azurite: Any, azure_container: str, key: str) -> None:
    s = AzureStore.from_connection_string(azurite.connection_string, azure_container)
    try:
        assert await s.put(key, b"data", overwrite=False) is True
        assert await s.put(key, b"other", overwrite=False) is False
        assert await s.get(key) == b"data"
        assert await s.list_keys("job/") == [key]
        assert await s.put(key, b"other") is True
        assert await s.get(key) == b"other"
    finally:
        await s.close()


@pytest.mark.azure
async def test_empty_object_round_trips(azurite: Any, azure_container: str) -> None:
    s = AzureStore.from_connection_string(azurite.connection_string, azure_container)
    try:
        assert await s.put("job/empty.json", b"", overwrite=False) is True
        assert await s.get("job/empty.json") == b""
    finally:
        await s.close()


@pytest.mark.azure
async def test_sas_connection_string_puts(azurite: Any, azure_container: str) -> None:
    key_store = AzureStore.from_connection_string(azurite.connection_string, azure_container)
    await key_store.ping()  # creates the container: a container SAS cannot
    parts = dict(p.split("=", 1) for p in azurite.connection_string.split(";") if p)
    sas = generate_container_sas(parts["AccountName"], azure_container, account_key=parts["AccountKey"],
                                 permission=ContainerSasPermissions(read=True, write=True, list=True),
                                 expiry=datetime.now(UTC) + timedelta(hours=1))
    s = AzureStore.from_connection_string(
        f"BlobEndpoint={parts['BlobEndpoint']};SharedAccessSignature={sas}", azure_container)
    try:
        assert await s.put("job/sas.json", b"via sas", overwrite=False) is True
        assert await s.put("job/sas.json", b"again", overwrite=False) is False
        assert await key_store.get("job/sas.json") == b"via sas"
    finally:
        await s.close()
        await key_store.close()


@pytest.mark.azure
async def test_a_bad_sas_is_store_error_without_it(azurite: Any, azure_container: str) -> None:
    parts = dict(p.split("=", 1) for p in azurite.connection_string.split(";") if p)
    bad = "sv=2025-11-05&sr=c&sp=rw&se=2099-01-01T00%3A00%3A00Z&sig=bm90LWEtcmVhbC1zaWduYXR1cmU%3D"
    s = AzureStore.from_connection_string(
        f"BlobEndpoint={parts['BlobEndpoint']};SharedAccessSignature={bad}", azure_container)
    try:
        with pytest.raises(StoreError) as e:
            await s.put("job/a.json", b"x", overwrite=False)
        assert "HTTP 403" in str(e.value)
        assert "bm90LWEtcmVhbC1zaWduYXR1cmU" not in str(e.value)
    finally:
        await s.close()


# --- bearer tokens, against a recording server ----------------------------------------------------


@dataclass
class Credential:
    """An AsyncTokenCredential that counts its tokens; each lives `lifetime` seconds."""

    lifetime: float = 3600
    issued: list[str] = field(default_factory=list)
    scopes: list[tuple[str, ...]] = field(default_factory=list)

    async def get_token(self, *scopes: str, **_kwargs: Any) -> AccessToken:
        self.scopes.append(scopes)
        self.issued.append(f"token-{len(self.issued) + 1}")
        return AccessToken(self.issued[-1], int(time.time() + self.lifetime))

    async def close(self) -> None:
        pass

    async def __aenter__(self) -> Credential:
        return self

    async def __aexit__(self, *_args: object) -> None:
        pass


@dataclass
class Blobs:
    """A recording stand-in for the blob service's Put Blob: answers from `script`, then as Azure would."""

    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    stored: dict[str, bytes] = field(default_factory=dict)
    script: list[tuple[int, str | None]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append((request.raw_path, dict(request.headers), body))
        if self.script:
            status, code = self.script.pop(0)
            return web.Response(status=status, headers={"x-ms-error-code": code} if code else {})
        if request.headers.get("If-None-Match") == "*" and request.raw_path in self.stored:
            return web.Response(status=409, headers={"x-ms-error-code": "BlobAlreadyExists"})
        self.stored[request.raw_path] = body
        return web.Response(status=201)


@pytest.fixture
async def blobs() -> AsyncIterator[Blobs]:
    rec = Blobs()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", rec.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    rec.url = f"http://127.0.0.1:{port}/acct/logs"
    yield rec
    await runner.cleanup()


def bearer_putter(url: str, credential: Credential, retry_total: int = 2) -> BlobPutter:
    return BlobPutter(url, Bearer(credential, https_only=False), api_version=API_VERSION, connection_timeout=5,
                      read_timeout=5, retry_total=retry_total, retry_backoff=0, trust_env=False)


async def test_bearer_put_sends_the_token_and_put_blob_headers(blobs: Blobs) -> None:
    cred = Credential()
    p = bearer_putter(blobs.url, cred)
    try:
        assert await p.put("job/_staging/b-1.json", b'{"v":1}', overwrite=False) is True
        assert await p.put("job/_staging/b-1.json", b'{"v":1}', overwrite=False) is False
        assert await p.put("job/summary.json", b"{}", overwrite=True) is True
    finally:
        await p.close()
    assert cred.issued == ["token-1"] and cred.scopes == [(STORAGE_SCOPE,)]  # one token, cached
    (path, headers, body), _, (path3, headers3, _) = blobs.requests
    assert path == "/acct/logs/job/_staging/b-1.json" and body == b'{"v":1}'
    assert headers["Authorization"] == "Bearer token-1"
    assert headers["x-ms-blob-type"] == "BlockBlob"
    assert headers["x-ms-version"] == API_VERSION
    assert headers["If-None-Match"] == "*"
    assert headers["Content-Type"] == "application/octet-stream"
    assert headers["Content-Length"] == str(len(body))
    assert headers["x-ms-date"].endswith(" GMT")
    assert path3 == "/acct/logs/job/summary.json" and "If-None-Match" not in headers3
    assert headers3["Authorization"] == "Bearer token-1"


async def test_bearer_token_is_renewed_before_it_expires(blobs: Blobs) -> None:
    cred = Credential(lifetime=60)  # inside the refresh margin: every put asks for a fresh one
    p = bearer_putter(blobs.url, cred)
    try:
        await asyncio.gather(*(p.put(f"job/{i}.json", b"x", overwrite=False) for i in range(3)))
    finally:
        await p.close()
    assert [h["Authorization"] for _, h, _ in blobs.requests] == ["Bearer token-1", "Bearer token-2",
                                                                 "Bearer token-3"]


async def test_bearer_rejected_token_is_replaced_and_the_put_retried(blobs: Blobs) -> None:
    cred = Credential()
    blobs.script = [(401, "InvalidAuthenticationInfo")]
    p = bearer_putter(blobs.url, cred)
    try:
        assert await p.put("job/a.json", b"x", overwrite=False) is True
    finally:
        await p.close()
    assert [h["Authorization"] for _, h, _ in blobs.requests] == ["Bearer token-1", "Bearer token-2"]


async def test_server_errors_are_retried_then_raised(blobs: Blobs) -> None:
    blobs.script = [(503, "ServerBusy"), (500, "InternalError")]
    p = bearer_putter(blobs.url, Credential())
    try:
        assert await p.put("job/a.json", b"x", overwrite=False) is True
        assert len(blobs.requests) == 3
        blobs.script = [(503, "ServerBusy")] * 3
        with pytest.raises(BlobPutError) as e:
            await p.put("job/b.json", b"x", overwrite=False)
        assert (e.value.status, e.value.code) == (503, "ServerBusy")
        assert len(blobs.requests) == 6
        blobs.script = [(403, "AuthorizationPermissionMismatch")]
        with pytest.raises(BlobPutError) as e:
            await p.put("job/c.json", b"x", overwrite=False)
        assert e.value.status == 403 and len(blobs.requests) == 7  # not retried
    finally:
        await p.close()


async def test_a_lost_answer_then_conflict_reports_existing(blobs: Blobs) -> None:
    """Put-if-absent whose first answer was a 500 after the write: the retry finds the blob."""
    blobs.script = [(500, "InternalError"), (412, "ConditionNotMet")]
    p = bearer_putter(blobs.url, Credential())
    try:
        assert await p.put("job/a.json", b"x", overwrite=False) is False
        blobs.script = [(412, "ConditionNotMet")]
        with pytest.raises(BlobPutError):
            await p.put("job/a.json", b"x", overwrite=True)  # an overwrite never "finds" a blob
    finally:
        await p.close()


async def test_a_token_is_never_sent_over_http(blobs: Blobs) -> None:
    """As the SDK, which refuses a token credential with an http account URL outright."""
    cred = Credential()
    p = BlobPutter(blobs.url, Bearer(cred), api_version=API_VERSION, connection_timeout=5, read_timeout=5,
                   retry_total=2, retry_backoff=0, trust_env=False)
    try:
        with pytest.raises(BlobPutError, match="only sent over https"):
            await p.put("job/a.json", b"x", overwrite=False)
    finally:
        await p.close()
    assert blobs.requests == [] and cred.issued == []


async def test_store_creates_a_missing_container_then_puts(blobs: Blobs) -> None:
    """ContainerNotFound on put: the store creates the container (SDK) and puts again (direct)."""
    blobs.script = [(404, "ContainerNotFound")]
    putter = bearer_putter(blobs.url, Credential())
    from azure.storage.blob.aio import ContainerClient

    client = ContainerClient(blobs.url.rsplit("/", 1)[0], "logs")
    s = AzureStore(client, putter)
    try:
        assert await s.put("job/a.json", b"x", overwrite=False) is True
    finally:
        await s.close()
    assert [p for p, _, _ in blobs.requests] == ["/acct/logs/job/a.json", "/acct/logs?restype=container",
                                                  "/acct/logs/job/a.json"]
