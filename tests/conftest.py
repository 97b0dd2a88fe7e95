"""Fixtures every test module may use: free ports, a real Azurite, the real aggregator process, and the
aggregator's stores over both backends (`kit`, `local_kit`, `store`) and its app over them (`serve`).

One of each kind lives here; aggregator helpers (configs, batch bodies, `StoreKit`) are agg_helpers.py.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from paths import ROOT

if TYPE_CHECKING:  # imported in the fixtures: loading conftest does not load the aggregator
    from agg_helpers import StoreKit
    from aiohttp.test_utils import TestClient

    from aggregator.storage import Store


# Azurite's documented development account (https://learn.microsoft.com/azure/storage/common/storage-use-azurite).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

TEST_SECRET = "test-secret-for-job-tokens"
TEST_ADMIN_TOKEN = "test-admin-token"


def azurite_connection_string(port: int) -> str:
    return (
        "DefaultEndpointsProtocol=http;"
        f"AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
        f"BlobEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT};"
    )


def free_port() -> int:
    """A loopback port free now, below the kernel's ephemeral range where there is room: a port from
    `bind(0)` is an ephemeral one, which an outgoing connection (a replica's to Azurite) may take before
    the server meant to listen on it starts (the rig gives its replicas their ports up front; one such
    collision once failed all ten reliability scenarios)."""
    low = _ephemeral_low()
    for _ in range(64 if low > 11_000 else 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", random.randrange(10_000, low)))
            except OSError:
                continue
            return int(s.getsockname()[1])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def azurite_binary() -> str | None:
    local = ROOT / ".tools" / "node_modules" / ".bin" / "azurite-blob"
    if local.exists():
        return str(local)
    return shutil.which("azurite-blob")


@dataclass
class Azurite:
    """A real Azurite blob service on a free loopback port; stop() and start() simulate an outage."""

    binary: str
    port: int
    location: Path | None = None  # disk persistence when set, in-memory otherwise
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def connection_string(self) -> str:
        return azurite_connection_string(self.port)

    def start(self) -> None:
        args = [self.binary, "--blobHost", "127.0.0.1", "--blobPort", str(self.port),
                "--skipApiVersionCheck", "--loose", "--disableTelemetry", "--silent"]
        if self.location is None:
            args.append("--inMemoryPersistence")
        else:
            args += ["--location", str(self.location)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        wait_port(self.port)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """One Azurite for the session; tests isolate themselves with a fresh container each."""
    binary = azurite_binary()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("azurite-blob not installed (scripts/bootstrap.sh installs it)")
        pytest.skip("azurite-blob not installed")
    az = Azurite(binary=binary, port=free_port())
    az.start()
    try:
        yield az
    finally:
        az.stop()


@pytest.fixture
def azure_container() -> str:
    return "t" + uuid.uuid4().hex[:20]


@dataclass
class AggregatorProc:
    """The real aggregator as a subprocess (`blast-log-aggregator serve`)."""

    port: int
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "aggregator.cli", "serve", "--host", "127.0.0.1",
             "--port", str(self.port)],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"aggregator exited: {self.log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1):
                    return
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)
        raise TimeoutError("aggregator did not become healthy")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """`sig` to the replica: its process group, the service and its finalize child, as a container's
        processes all get it (the child ignores SIGTERM: the service ends it)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)


def aggregator_env(store: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "BLAST_LOGS_STORE": store,
        "BLAST_LOGS_SECRET": TEST_SECRET,
        "BLAST_LOGS_ADMIN_TOKEN": TEST_ADMIN_TOKEN,
        "PYTHONPATH": str(ROOT),
    })
    env.update(extra or {})
    return env


@pytest.fixture
def start_aggregator(tmp_path: Path) -> Iterator[object]:
    """Factory: start_aggregator(store_url, **env) -> a running AggregatorProc, stopped at teardown."""
    procs: list[AggregatorProc] = []

    def _start(store: str | None = None, **extra: str) -> AggregatorProc:
        store = store or f"file://{tmp_path / 'store'}"
        p = AggregatorProc(port=free_port(), env=aggregator_env(store, extra),
                           log_path=tmp_path / f"aggregator-{len(procs)}.log")
        p.start()
        procs.append(p)
        return p

    yield _start
    for p in procs:
        p.kill()


@pytest.fixture(params=["local", pytest.param("azure", marks=pytest.mark.azure)])
async def kit(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreKit]:
    """One storage place per test: a local folder or (marked `azure`) a fresh Azurite container."""
    from agg_helpers import StoreKit

    az = request.getfixturevalue("azurite") if request.param == "azure" else None
    k = StoreKit(request.param, tmp_path, az)
    yield k
    await k.close()


@pytest.fixture
async def local_kit(tmp_path: Path) -> AsyncIterator[StoreKit]:
    """A local folder only, for what does not depend on the backend."""
    from agg_helpers import StoreKit

    k = StoreKit("local", tmp_path, None)
    yield k
    await k.close()


@pytest.fixture
def store(kit: StoreKit) -> Store:
    """A handle onto the test's storage place (both backends), closed at teardown."""
    return kit.inspector()


@pytest.fixture
def serve(aiohttp_client: Any, kit: StoreKit) -> Callable[..., Awaitable[TestClient[Any, Any]]]:
    """serve(**config_overrides) -> a test client on make_app over the test's store.

    `app_hook(app)`, when given, runs before the app starts (e.g. agg_helpers.on_request).
    """
    from agg_helpers import make_config

    from aggregator.app import make_app

    async def _serve(app_hook: Callable[[Any], None] | None = None, **overrides: Any) -> TestClient[Any, Any]:
        app = make_app(make_config(**overrides), store=kit.open())
        if app_hook is not None:
            app_hook(app)
        client: TestClient[Any, Any] = await aiohttp_client(app)
        return client

    return _serve


@pytest.fixture
async def recorder() -> AsyncIterator[Any]:
    """A recording aggregator stand-in (tests/shipper_helpers.py) on a free port."""
    from shipper_helpers import Recorder

    rec = await Recorder().start()
    yield rec
    await rec.stop()


@pytest.fixture(scope="module")
def bench_sink() -> Iterator[str]:
    """bench/sink.py running in its own process; its URL."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "sink.py")], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        assert line[0] == "listening", line
        yield line[1]
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    """A pod's shared volume folder with its logs/ made."""
    vol = tmp_path / "vol"
    (vol / "logs").mkdir(parents=True)
    return vol
