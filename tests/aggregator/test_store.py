"""The storage contract, run against both backends: LocalStore in a temp folder, AzureStore on Azurite."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from agg_helpers import StoreKit

from aggregator.storage import LocalStore, Store, StoreError, open_store
from aggregator.storage.azure import AzureStore
from aggregator.storage.base import ReadsRanges, put_parts, read_range

# Generous upper bound so a hang fails the test instead of the suite; not a speed assertion.
HANG_GUARD_S = 90.0

UNSAFE_KEYS = ["", "/abs", "..", "a/../b", "./a", "a//b", "a/", "a\x00b", "a/.tmp-123.part"]
UNSAFE_PREFIXES = ["/", "/a", "../", "a/../", "a//b", "a\x00", ".."]


def account_key(connection_string: str) -> str:
    return next(p.split("=", 1)[1] for p in connection_string.split(";") if p.startswith("AccountKey="))


def assert_no_secret(message: str, connection_string: str) -> None:
    assert connection_string not in message
    assert account_key(connection_string) not in message


# --- the contract, both backends ---------------------------------------------------------------


async def test_get_missing_is_none(store: Store) -> None:
    assert await store.get("job/none.json") is None


@pytest.mark.parametrize("data", [b"", b"{}", bytes(range(256)) + b"\xff\xfe\xc3(", "h\u00e9llo \u2603".encode()])
async def test_round_trip_keeps_bytes(store: Store, data: bytes) -> None:
    assert await store.put("job/x/obj.bin", data) is True
    assert await store.get("job/x/obj.bin") == data


async def test_overwrite_replaces(store: Store) -> None:
    await store.put("k/obj", b"old")
    assert await store.put("k/obj", b"new", overwrite=True) is True
    assert await store.get("k/obj") == b"new"


async def test_put_if_absent_keeps_original(store: Store) -> None:
    assert await store.put("k/obj", b"first", overwrite=False) is True
    assert await store.put("k/obj", b"second", overwrite=False) is False
    assert await store.get("k/obj") == b"first"


async def test_concurrent_put_if_absent_has_one_winner(store: Store) -> None:
    # On Azure this also races the container's creation: the container does not exist yet.
    results = await asyncio.gather(
        *(store.put("job/_staging/finalize.lock", f"writer-{i}".encode(), overwrite=False) for i in range(20))
    )
    assert results.count(True) == 1
    winner = results.index(True)
    assert await store.get("job/_staging/finalize.lock") == f"writer-{winner}".encode()


async def test_list_keys_by_prefix_sorted(store: Store) -> None:
    keys = ["job-a/x/2.json", "job-a/x/1.json", "job-a/y/z/3.json", "job-ab/1.json", "job-b/1.json", "top.json"]
    for k in keys:
        await store.put(k, b"1")
    assert await store.list_keys("job-a/") == ["job-a/x/1.json", "job-a/x/2.json", "job-a/y/z/3.json"]
    assert await store.list_keys("job-a") == [
        "job-a/x/1.json", "job-a/x/2.json", "job-a/y/z/3.json", "job-ab/1.json"]
    assert await store.list_keys("job-a/x/") == ["job-a/x/1.json", "job-a/x/2.json"]
    assert await store.list_keys("job-a/x/1") == ["job-a/x/1.json"]
    assert await store.list_keys("job-a/y/") == ["job-a/y/z/3.json"]
    assert await store.list_keys("") == sorted(keys)
    assert await store.list_keys("nothing/") == []
    assert await store.list_keys("job-c") == []


async def test_list_keys_of_empty_store(store: Store) -> None:
    assert await store.list_keys("") == []
    assert await store.list_keys("job/") == []


async def test_delete(store: Store) -> None:
    await store.delete("job/never-written.json")  # missing: not an error
    await store.put("job/a.json", b"1")
    await store.put("job/b.json", b"2")
    await store.delete("job/a.json")
    assert await store.get("job/a.json") is None
    assert await store.list_keys("job/") == ["job/b.json"]
    await store.delete("job/a.json")


async def test_ping_readies_the_store_and_repeats(kit: StoreKit) -> None:
    """ping answers for a reachable store and creates its root (folder or container), as the first put would."""
    store = kit.inspector()
    assert await _root_exists(kit) is False
    await store.ping()
    assert await _root_exists(kit) is True
    await store.ping()  # again: nothing to create, still fine
    assert await store.list_keys("") == []
    assert await store.put("job/after-ping.json", b"1") is True
    assert await store.get("job/after-ping.json") == b"1"


async def _root_exists(kit: StoreKit) -> bool:
    """Whether the folder or container exists, seen directly (not through the store under test)."""
    if kit.kind == "local":
        return kit.root.is_dir()
    from azure.storage.blob.aio import ContainerClient

    assert kit.azurite is not None
    async with ContainerClient.from_connection_string(kit.azurite.connection_string, kit.container) as client:
        return bool(await client.exists())


@pytest.mark.parametrize("key", UNSAFE_KEYS)
async def test_unsafe_keys_are_refused(store: Store, key: str) -> None:
    with pytest.raises(ValueError):
        await store.get(key)
    with pytest.raises(ValueError):
        await store.put(key, b"x")
    with pytest.raises(ValueError):
        await store.put(key, b"x", overwrite=False)
    with pytest.raises(ValueError):
        await store.delete(key)


@pytest.mark.parametrize("prefix", UNSAFE_PREFIXES)
async def test_unsafe_prefixes_are_refused(store: Store, prefix: str) -> None:
    with pytest.raises(ValueError):
        await store.list_keys(prefix)


# --- LocalStore: what only a folder can get wrong ----------------------------------------------


async def test_local_leaves_no_temp_files(tmp_path: Path) -> None:
    s = LocalStore(tmp_path)
    await s.put("job/a.json", b"1")
    await s.put("job/a.json", b"2")
    await s.put("job/a.json", b"3", overwrite=False)
    await s.put("job/b.json", b"4", overwrite=False)
    assert sorted(os.listdir(tmp_path / "job")) == ["a.json", "b.json"]
    # A write interrupted by a crash leaves its temp file behind: it is never a key.
    (tmp_path / "job" / ".tmp-crashed.part").write_bytes(b"half")
    assert await s.list_keys("job/") == ["job/a.json", "job/b.json"]
    assert await s.list_keys("") == ["job/a.json", "job/b.json"]


async def test_local_overwrite_is_atomic_for_readers(tmp_path: Path) -> None:
    s = LocalStore(tmp_path)
    old, new = b"a" * 512 * 1024, b"b" * 512 * 1024
    await s.put("k", old)
    stop = asyncio.Event()
    seen: list[bytes | None] = []

    async def writer() -> None:
        for i in range(60):
            await s.put("k", new if i % 2 == 0 else old)
        stop.set()

    async def reader() -> None:
        while not stop.is_set():
            seen.append(await s.get("k"))

    await asyncio.gather(writer(), reader(), reader())
    assert seen
    assert all(v in (old, new) for v in seen)


async def test_local_failure_is_store_error(tmp_path: Path) -> None:
    # The root is a file: nothing can be written under it.
    root = tmp_path / "not-a-folder"
    root.write_bytes(b"")
    s = LocalStore(root)
    with pytest.raises(StoreError):
        await s.put("job/a.json", b"1")
    with pytest.raises(StoreError):
        await s.ping()
    # A listing must fail loudly too: an empty answer would make finalize say 404, not 503.
    with pytest.raises(StoreError):
        await s.list_keys("job/")


# --- open_store ---------------------------------------------------------------------------------


def test_open_store_file_absolute(tmp_path: Path) -> None:
    s = open_store(f"file://{tmp_path}/data")
    assert isinstance(s, LocalStore) and s.root == tmp_path / "data"
    s = open_store(f"file://localhost{tmp_path}/my%20data")
    assert isinstance(s, LocalStore) and s.root == tmp_path / "my data"


def test_open_store_file_relative(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = open_store("file:blast-logs-data")
    assert isinstance(s, LocalStore) and s.root == tmp_path / "blast-logs-data"
    s = open_store("file:a/b")
    assert isinstance(s, LocalStore) and s.root == tmp_path / "a" / "b"


@pytest.mark.parametrize("url", ["", "/abs/path", "rel/path", "s3://bucket", "http://x", "file:", "file://",
                                 "file:///", "file://otherhost/data", "azure:/name", "AZURE://name"])
def test_open_store_refuses_bad_urls(url: str) -> None:
    with pytest.raises(ValueError, match="store"):
        open_store(url, azure_connection_string="UseDevelopmentStorage=true")


@pytest.mark.parametrize("name", ["", "ab", "Abc", "a_b", "a--b", "-abc", "abc-", "a" * 64, "a.b", "a/b", "ab c"])
def test_open_store_refuses_bad_container_names(name: str) -> None:
    with pytest.raises(ValueError, match="container name"):
        open_store(f"azure://{name}", azure_connection_string="UseDevelopmentStorage=true")


@pytest.mark.parametrize("name", ["abc", "a-b-c", "logs2024", "a" * 63, "0-blast-logs"])
async def test_open_store_azure_with_connection_string(name: str) -> None:
    s = open_store(f"azure://{name}", azure_connection_string="UseDevelopmentStorage=true")
    assert isinstance(s, AzureStore) and s.container == name
    await s.close()


async def test_open_store_azure_with_account_url() -> None:
    s = open_store("azure://blast-logs", azure_account_url="https://acct.blob.core.windows.net")
    assert isinstance(s, AzureStore) and s.container == "blast-logs"
    await s.close()


def test_open_store_azure_needs_exactly_one_credential_source() -> None:
    with pytest.raises(ValueError, match="BLAST_LOGS_AZURE_ACCOUNT_URL"):
        open_store("azure://blast-logs")
    with pytest.raises(ValueError, match="only one"):
        open_store("azure://blast-logs", azure_account_url="https://acct.blob.core.windows.net",
                   azure_connection_string="UseDevelopmentStorage=true")


def test_malformed_connection_string_is_not_echoed() -> None:
    secret = "AccountName=x;AccountKey=c2VjcmV0LWtleQ==;NoEndpoint"
    with pytest.raises(ValueError) as e:
        open_store("azure://blast-logs", azure_connection_string=secret)
    assert "c2VjcmV0LWtleQ" not in str(e.value) and secret not in str(e.value)


# --- AzureStore: failures ------------------------------------------------------------------------


def store_calls(s: Store) -> dict[str, Callable[[], Awaitable[Any]]]:
    return {
        "get": lambda: s.get("job/a.json"),
        "put": lambda: s.put("job/a.json", b"x"),
        "put-if-absent": lambda: s.put("job/b.json", b"x", overwrite=False),
        "delete": lambda: s.delete("job/a.json"),
        "list_keys": lambda: s.list_keys("job/"),
        "ping": lambda: s.ping(),
    }


@pytest.mark.azure
async def test_azure_outage_raises_store_error_then_recovers(azurite: Any, azure_container: str) -> None:
    s = AzureStore.from_connection_string(azurite.connection_string, azure_container)
    try:
        await s.put("job/a.json", b"before")
        azurite.stop()
        try:
            for name, call in store_calls(s).items():
                started = time.monotonic()
                with pytest.raises(StoreError) as e:
                    await asyncio.wait_for(call(), HANG_GUARD_S)
                print(f"outage: {name} raised StoreError after {time.monotonic() - started:.2f}s: {e.value}")
                assert_no_secret(str(e.value), azurite.connection_string)
                assert e.value.__cause__ is None
        finally:
            if azurite.proc is None:
                azurite.start()
        # Same object, same port: it works again. Azurite kept nothing (in memory), so the
        # container is gone too and the first put must create it again.
        await s.ping()
        assert await s.get("job/a.json") is None
        assert await s.put("job/a.json", b"after", overwrite=False) is True
        assert await s.get("job/a.json") == b"after"
        assert await s.list_keys("job/") == ["job/a.json"]
    finally:
        await s.close()


@pytest.mark.azure
async def test_azure_recreates_a_deleted_container(azurite: Any, azure_container: str) -> None:
    s = AzureStore.from_connection_string(azurite.connection_string, azure_container)
    other = AzureStore.from_connection_string(azurite.connection_string, azure_container)
    try:
        await s.put("job/a.json", b"1")
        await other._client.delete_container()
        assert await s.list_keys("job/") == []
        assert await s.get("job/a.json") is None
        results = await asyncio.gather(*(s.put(f"job/{i}.json", b"2", overwrite=False) for i in range(5)))
        assert results == [True] * 5
        assert len(await s.list_keys("job/")) == 5
    finally:
        await s.close()
        await other.close()


@pytest.mark.azure
async def test_azure_auth_failure_is_store_error_without_key(azurite: Any, azure_container: str) -> None:
    wrong_key = "d3Jvbmcta2V5LXRoYXQtaXMtbm90LWF6dXJpdGVzLWtleQ=="
    conn = azurite.connection_string.replace(account_key(azurite.connection_string), wrong_key)
    s = AzureStore.from_connection_string(conn, azure_container)
    try:
        for call in store_calls(s).values():
            with pytest.raises(StoreError) as e:
                await asyncio.wait_for(call(), HANG_GUARD_S)
            assert "403" in str(e.value)
            assert_no_secret(str(e.value), conn)
    finally:
        await s.close()


async def test_azure_silent_server_hits_the_operation_deadline(azure_container: str) -> None:
    """A server that accepts connections and never answers (a black hole) still yields StoreError."""
    accepted: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    conn = ("DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
            "AccountKey=c2lsZW50LXNlcnZlci10ZXN0LWtleQ==;"
            f"BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;")
    s = AzureStore.from_connection_string(conn, azure_container, operation_timeout=1.0)
    try:
        for call in (lambda: s.get("job/a.json"), lambda: s.put("job/a.json", b"x", overwrite=False)):
            with pytest.raises(StoreError, match="no answer within 1s") as e:
                await asyncio.wait_for(call(), HANG_GUARD_S)
            assert_no_secret(str(e.value), conn)
        assert accepted
    finally:
        await s.close()
        for w in accepted:
            w.close()
        server.close()
        await server.wait_closed()


# --- Connection strings: parsed once, for the SDK client and the putter alike ------------------------

def test_connection_string_development_storage_is_azurite() -> None:
    from aggregator.storage.azure_credentials import DEV_ACCOUNT_KEY, parse_connection_string

    cs = parse_connection_string("UseDevelopmentStorage=true")
    assert (cs.account_url, cs.account_name, cs.account_key) == (
        "http://127.0.0.1:10000/devstoreaccount1", "devstoreaccount1", DEV_ACCOUNT_KEY)
    assert cs.sdk_credential() == {"account_name": "devstoreaccount1", "account_key": DEV_ACCOUNT_KEY}


def test_connection_string_shared_key_and_sas() -> None:
    from aggregator.storage.azure_credentials import parse_connection_string
    from aggregator.storage.azure_put import Sas, SharedKey

    cs = parse_connection_string("DefaultEndpointsProtocol=https;accountname=acct;AccountKey=c2VjcmV0;"
                                 "EndpointSuffix=core.example.net;")
    assert cs.account_url == "https://acct.blob.core.example.net" and isinstance(cs.auth(), SharedKey)
    cs = parse_connection_string("BlobEndpoint=https://acct.blob.core.windows.net/;SharedAccessSignature=?sv=1&sig=x")
    assert cs.account_url == "https://acct.blob.core.windows.net" and cs.sdk_credential() == "sv=1&sig=x"
    auth = cs.auth()
    assert isinstance(auth, Sas) and auth.query == "sv=1&sig=x" and "sig=x" not in repr(cs)


@pytest.mark.parametrize("text", ["", "AccountName=x", "AccountKey=c2VjcmV0", "AccountName=x;AccountKey=not base64!",
                                  "BlobEndpoint=http://h/x;NoValue"])
def test_unusable_connection_strings_are_config_errors(text: str) -> None:
    from aggregator.errors import ConfigError
    from aggregator.storage.azure_credentials import parse_connection_string

    with pytest.raises(ConfigError, match="malformed Azure connection string"):
        parse_connection_string(text)


# --- ranged reads (issue 16: a big staged object is read a slice at a time) -------------------------


@pytest.mark.parametrize("size", [0, 1, 1000])
async def test_read_range_gives_slices_and_the_size(store: Store, size: int) -> None:
    data = bytes(i % 251 for i in range(size))
    await store.put("job/big.json", data)
    assert isinstance(store, ReadsRanges)
    for start, length in [(0, 10), (0, size), (3, 7), (size - 5, 100), (size, 10), (size + 10, 5), (0, 0)]:
        start = max(start, 0)
        assert await store.read_range("job/big.json", start, length) == (data[start:start + length], size)
    slices = []
    pos = 0
    while pos < size:
        got = await store.read_range("job/big.json", pos, 64)
        assert got is not None
        slices.append(got[0])
        pos += len(got[0])
    assert b"".join(slices) == data


async def test_read_range_of_a_missing_object_is_none(store: Store) -> None:
    assert await store.read_range("job/none.json", 0, 10) is None  # type: ignore[attr-defined]
    with pytest.raises(ValueError):
        await store.read_range("../x", 0, 10)  # type: ignore[attr-defined]


async def test_read_range_without_the_method_reads_whole(tmp_path: Path) -> None:
    """A store that only has `get` (a wrapper, a test double) still serves `read_range`, by cutting."""

    class GetOnly:
        def __init__(self) -> None:
            self.inner = LocalStore(tmp_path)

        async def get(self, key: str) -> bytes | None:
            return await self.inner.get(key)

    plain = GetOnly()
    await plain.inner.put("k/obj", b"0123456789")
    assert not isinstance(plain, ReadsRanges)
    assert await read_range(plain, "k/obj", 2, 3) == (b"234", 10)  # type: ignore[arg-type]
    assert await read_range(plain, "k/none", 2, 3) is None  # type: ignore[arg-type]


async def test_put_parts_writes_their_concatenation(store: Store) -> None:
    parts = [b'{"a":', memoryview(b"xx[1,2,3]yy")[2:9], b"", b"}"]
    assert await put_parts(store, "job/parts.json", parts) is True
    assert await store.get("job/parts.json") == b'{"a":[1,2,3]}'
    assert await put_parts(store, "job/parts.json", [b"other"], overwrite=False) is False
    assert await store.get("job/parts.json") == b'{"a":[1,2,3]}'
