"""The rig's processes: Azurite on disk, aggregator replicas, shipper sidecars, wrapped containers.

Every process starts in its own session, so a kill reaches its whole group (logwrap's `tee`, BLAST);
`Processes.cleanup()` kills whatever is still alive and is called from `finally` blocks.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from conftest import azurite_binary, azurite_connection_string, free_port
from paths import ROOT

#: How long a started service may take to listen.
START_TIMEOUT = 30.0
#: How long a stopped process may take to exit after SIGTERM before it gets SIGKILL.
STOP_TIMEOUT = 15.0


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class Processes:
    """Every process the rig started, so that none outlives it."""

    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def spawn(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, log: Path | None = None,
              cwd: Path | None = None) -> subprocess.Popen[bytes]:
        out = open(log, "ab") if log is not None else subprocess.DEVNULL
        try:
            p = subprocess.Popen(list(argv), env=dict(env) if env is not None else None, cwd=cwd,
                                 stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        finally:
            if log is not None:
                out.close()  # type: ignore[union-attr]
        self.procs.append(p)
        return p

    def cleanup(self) -> None:
        for p in self.procs:
            kill_group(p, signal.SIGKILL)
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=5)
        self.procs.clear()


def kill_group(p: subprocess.Popen[bytes], sig: int) -> None:
    """Send `sig` to the process group `p` leads (it was started in its own session)."""
    if p.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, sig)
    elif sig == signal.SIGKILL:
        # The leader is gone; children of the group (a stray tee) may not be.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, sig)


def stop(p: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> int:
    """SIGTERM the group, SIGKILL it after `timeout`; the exit status."""
    kill_group(p, signal.SIGTERM)
    try:
        return p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(p, signal.SIGKILL)
        return p.wait()


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            status: int = r.status
            return 200 <= status < 300
    except (urllib.error.URLError, OSError):
        return False


@dataclass
class Azurite:
    """Azurite's blob service persisting to `location`, so a stop and start keeps every blob."""

    procs: Processes
    location: Path
    log: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def connection_string(self) -> str:
        return azurite_connection_string(self.port)

    def start(self) -> None:
        binary = azurite_binary()
        if binary is None:
            raise RuntimeError("azurite-blob is not installed (scripts/bootstrap.sh installs it)")
        self.location.mkdir(parents=True, exist_ok=True)
        self.proc = self.procs.spawn(
            [binary, "--blobHost", "127.0.0.1", "--blobPort", str(self.port), "--location", str(self.location),
             "--skipApiVersionCheck", "--loose", "--disableTelemetry"],
            log=self.log)
        deadline = time.monotonic() + START_TIMEOUT
        while not port_open(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Azurite did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        """A clean stop (SIGTERM): Azurite saves its metadata to `location` before exiting."""
        if self.proc is not None:
            stop(self.proc)
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Aggregator:
    """One replica: `python -m aggregator.cli serve` on a fixed port (a restart keeps its URL)."""

    procs: Processes
    env: dict[str, str]
    log: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.spawn()
        self.wait_ready()

    def spawn(self) -> None:
        self.proc = self.procs.spawn(
            [sys.executable, "-m", "aggregator.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            env=self.env, log=self.log, cwd=ROOT)

    def wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        while not http_ok(self.url + "/healthz"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"aggregator did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)

    def kill(self) -> None:
        """kill -9: no drain, no goodbye."""
        if self.proc is not None:
            kill_group(self.proc, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None
