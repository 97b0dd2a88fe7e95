"""Put Blob as one signed aiohttp request: every staged batch (and every chunk) is written this way.

The SDK's `upload_blob` spent about 2 ms of CPU per call here (a BlobClient and a generated client
per key, a 15-policy pipeline, response deserialising), as much as the rest of an ingest. This
sends the request the SDK sends for a blob below its single-put size (`PUT`, `x-ms-blob-type:
BlockBlob`, `If-None-Match: *` for put-if-absent, the SDK's API version), authenticated the way
the SDK's own client is (Shared Key, a SAS, or a bearer token from its credential), with the
same per-attempt timeouts and linear retries. Everything else stays on the SDK (`storage/azure.py`).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import random
import time
from email.utils import formatdate
from typing import TYPE_CHECKING, Protocol
from urllib.parse import quote, urlsplit

import aiohttp
from yarl import URL

from aggregator.errors import BlobPutError
from blastlogs.retry import backoff_delay

if TYPE_CHECKING:  # the Azure SDK stays in storage/azure.py; these are types only
    from azure.core.credentials import AccessToken
    from azure.core.credentials_async import AsyncTokenCredential

#: The scope of a token for Azure Storage (what the SDK asks for).
STORAGE_SCOPE = "https://storage.azure.com/.default"
#: A cached token is replaced this long before it expires (azure-core's bearer policy uses 300 s too).
TOKEN_REFRESH_MARGIN_S = 300
CONTENT_TYPE = "application/octet-stream"
#: What Azure answers Put Blob with `If-None-Match: *` when the blob exists.
_EXISTS = {(409, "BlobAlreadyExists"), (412, "ConditionNotMet")}
#: Characters a key keeps unescaped in the URL (RFC 3986 unreserved, and the path separator).
_SAFE = "/-_.~"


class Auth(Protocol):
    """Adds a request's credentials: headers, or a query string appended to the URL."""

    #: Appended to the URL (a SAS); "" for credentials sent in headers.
    query: str
    #: The credential must never travel over plain http.
    https_only: bool

    async def sign(self, path: str, headers: dict[str, str], length: int) -> None: ...

    def rejected(self) -> bool:
        """Storage answered 401: forget anything cached; True when a retry may then succeed."""


class SharedKey:
    """Shared Key authorization (connection strings with an account key, Azurite)."""

    query = ""
    https_only = False  # the key signs the request; it is never sent

    def __init__(self, account: str, key_b64: str) -> None:
        self.account = account
        self._key = base64.b64decode(key_b64)

    async def sign(self, path: str, headers: dict[str, str], length: int) -> None:
        # https://learn.microsoft.com/rest/api/storageservices/authorize-with-shared-key (version 2015-02-21+):
        # VERB, Content-Encoding, -Language, -Length ("" for 0), -MD5, -Type, Date, If-Modified-Since,
        # If-Match, If-None-Match, If-Unmodified-Since, Range, then the x-ms-* headers and the resource.
        ms = "".join(f"{name}:{headers[name]}\n" for name in sorted(h for h in headers if h.startswith("x-ms-")))
        to_sign = (f"PUT\n\n\n{length or ''}\n\n{headers['Content-Type']}\n\n\n\n"
                   f"{headers.get('If-None-Match', '')}\n\n\n{ms}/{self.account}{path}")
        digest = hmac.new(self._key, to_sign.encode(), hashlib.sha256).digest()
        headers["Authorization"] = f"SharedKey {self.account}:{base64.b64encode(digest).decode()}"

    def rejected(self) -> bool:
        return False


class Sas:
    """A shared access signature: the query string is the credential."""

    https_only = False  # as the SDK: a SAS names its own allowed protocols (`spr`)

    def __init__(self, query: str) -> None:
        self.query = query

    async def sign(self, path: str, headers: dict[str, str], length: int) -> None:
        pass

    def rejected(self) -> bool:
        return False


class Bearer:
    """A token from the SDK credential (workload or managed identity), cached until near its expiry.

    As with the SDK, a token is never sent over plain http; `https_only=False` is for tests.
    """

    query = ""

    def __init__(self, credential: AsyncTokenCredential, *, https_only: bool = True) -> None:
        self._credential = credential
        self.https_only = https_only
        self._token: AccessToken | None = None
        self._lock = asyncio.Lock()

    async def sign(self, path: str, headers: dict[str, str], length: int) -> None:
        token = self._token
        if token is None or token.expires_on - time.time() < TOKEN_REFRESH_MARGIN_S:
            async with self._lock:  # one refresh however many puts find the token stale
                token = self._token
                if token is None or token.expires_on - time.time() < TOKEN_REFRESH_MARGIN_S:
                    token = self._token = await self._credential.get_token(STORAGE_SCOPE)
        headers["Authorization"] = f"Bearer {token.token}"

    def rejected(self) -> bool:
        self._token = None  # it may have been revoked: the retry gets a new one
        return True


class BlobPutter:
    """Put Blob into one container; one aiohttp session, opened on first use and closed by close()."""

    def __init__(self, container_url: str, auth: Auth, *, api_version: str, connection_timeout: float,
                 read_timeout: float, retry_total: int, retry_backoff: float, trust_env: bool) -> None:
        parts = urlsplit(container_url)
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._path = parts.path.rstrip("/")
        self._auth = auth
        self._https = parts.scheme == "https"
        self._api_version = api_version
        self._timeout = aiohttp.ClientTimeout(sock_connect=connection_timeout, sock_read=read_timeout)
        self._retry_total = retry_total
        self._retry_backoff = retry_backoff
        self._trust_env = trust_env
        self._session: aiohttp.ClientSession | None = None

    async def put(self, key: str, data: bytes, *, overwrite: bool) -> bool:
        """True when written; False when `overwrite` is False and the blob exists (If-None-Match: *).

        As with the SDK, a retry after a lost response can find this put's own write and say False.
        """
        if self._auth.https_only and not self._https:
            raise BlobPutError("a bearer token is only sent over https")
        path = self._path + "/" + quote(key, safe=_SAFE)
        url = URL(self._origin + path + (f"?{self._auth.query}" if self._auth.query else ""), encoded=True)
        attempt = 0
        while True:
            try:
                status, code = await self._attempt(url, path, data, overwrite)
            except (aiohttp.ClientError, OSError, TimeoutError):
                if attempt >= self._retry_total:
                    raise
            else:
                if status == 201:
                    return True
                if not overwrite and (status, code) in _EXISTS:
                    return False
                renewed = status == 401 and self._auth.rejected()
                if attempt >= self._retry_total or not (_retryable(status) or renewed):
                    raise BlobPutError(f"HTTP {status}", status, code)
            attempt += 1
            await asyncio.sleep(linear_pause(self._retry_backoff, random.random()))

    async def _attempt(self, url: URL, path: str, data: bytes, overwrite: bool) -> tuple[int, str | None]:
        headers = {"Content-Type": CONTENT_TYPE, "x-ms-blob-type": "BlockBlob",
                   "x-ms-date": formatdate(usegmt=True), "x-ms-version": self._api_version}
        if not overwrite:
            headers["If-None-Match"] = "*"
        await self._auth.sign(path, headers, len(data))
        async with self._open().put(url, data=data, headers=headers, timeout=self._timeout) as resp:
            await resp.read()
            return resp.status, resp.headers.get("x-ms-error-code")

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(trust_env=self._trust_env, auto_decompress=False,
                                                  cookie_jar=aiohttp.DummyCookieJar())
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def linear_pause(backoff: float, rand: float) -> float:
    """The pause before a retry: full jitter (`blastlogs.retry`) with the same ceiling every attempt,
    uniform in [0, 2 * backoff]: for the 1 s used here, what the SDK's `LinearRetry(backoff=1,
    random_jitter_range=1)` waits."""
    return backoff_delay(0, 2 * backoff, 2 * backoff, rand)


def _retryable(status: int) -> bool:
    """As the SDK's storage retry policy: a timeout, or a server error other than 501 and 505."""
    return status == 408 or (status >= 500 and status not in (501, 505))
