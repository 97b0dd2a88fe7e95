"""The topology as processes: Azurite on disk, two aggregator replicas, and a job's three pods.

A pod is a folder standing for its `blast-logs` emptyDir volume, a shipper subprocess over it with the
environment the injected pod spec gives (plus `BLAST_LOGS_DIR`, since the folder is not at the default
mount path, and the metrics port off, since three sidecars share one host), and containers run as
`sh <volume>/bin/logwrap NAME -- CMD`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from azure.storage.blob import ContainerClient

from aggregator.client import FinalizeResult, finalize_sync, job_token
from rig.procs import ROOT, Aggregator, Azurite, Processes, free_port, http_ok, kill_group
from rig.storage import container_client, ensure_container

SECRET = "rig-secret-for-job-tokens"
ADMIN_TOKEN = "rig-admin-token"
NAMESPACE = "elb-rig"
#: Retention large enough that no `[... N lines omitted ...]` marker hides lines in the rig.
RIG_TAIL_LINES = 10_000_000
#: finalize's budget beyond its wait: a full-size job's finalize takes about a minute on Azurite on a
#: busy 2-core machine, and a second replica's finalize first waits for the first one's lock.
FINALIZE_TIMEOUT_MARGIN = 600.0
#: How long a shipper may take to install bin/logwrap (the injected spec's startup probe).
STARTUP_TIMEOUT = 20.0


@dataclass(frozen=True)
class Expected:
    """Where a stream's truth comes from: the writer's own record, logwrap's log, or a fixed list."""

    record: Path | None = None
    lines: tuple[str, ...] | None = None


class Rig:
    """Azurite (persisting to disk) and two aggregator replicas on one Azure container."""

    def __init__(self, work: Path, *, aggregator_env: Mapping[str, str] | None = None) -> None:
        self.work = work
        self.procs = Processes()
        self.container = "rig" + uuid.uuid4().hex[:16]
        self.extra_env = dict(aggregator_env or {})
        self.azurite = Azurite(self.procs, work / "azurite-data", work / "azurite.log")
        self.aggregators = [
            Aggregator(self.procs, self.aggregator_env(self.container), work / f"aggregator-{i}.log")
            for i in range(2)
        ]
        self._spare: tuple[Aggregator, str] | None = None

    def aggregator_env(self, container: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "PYTHONPATH": str(ROOT),
            "BLAST_LOGS_STORE": f"azure://{container}",
            "BLAST_LOGS_AZURE_CONNECTION_STRING": self.azurite.connection_string,
            "BLAST_LOGS_SECRET": SECRET,
            "BLAST_LOGS_ADMIN_TOKEN": ADMIN_TOKEN,
            "BLAST_LOGS_TAIL_LINES": str(RIG_TAIL_LINES),
            "BLAST_LOGS_LOG_LEVEL": "WARNING",
        })
        env.update(self.extra_env)
        return env

    def __enter__(self) -> Rig:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def start(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        self.azurite.start()
        ensure_container(self.azurite.connection_string, self.container)
        self.ensure_up()

    def ensure_up(self) -> None:
        """Start whatever is down (a previous scenario's fault), the replicas side by side."""
        if not self.azurite.running:
            self.azurite.start()
        down = [agg for agg in self.aggregators if not agg.running]
        for agg in down:
            agg.spawn()
        for agg in down:
            agg.wait_ready()

    def close(self) -> None:
        if self._spare is not None:
            self._spare[0].stop()
        for agg in self.aggregators:
            agg.stop()
        self.azurite.stop()
        self.procs.cleanup()

    @property
    def urls(self) -> str:
        """The shippers' BLAST_LOGS_AGGREGATOR_URL: both replicas, to fail over between."""
        return ",".join(a.url for a in self.aggregators)

    def storage(self, container: str | None = None) -> ContainerClient:
        return container_client(self.azurite.connection_string, container or self.container)

    def finalize(self, replica: int, job_id: str, wait_seconds: float) -> FinalizeResult:
        return finalize_sync(self.aggregators[replica].url, ADMIN_TOKEN, job_id, wait_seconds=wait_seconds,
                             timeout=wait_seconds + FINALIZE_TIMEOUT_MARGIN)

    def spare(self) -> tuple[Aggregator, str]:
        """A third replica on a container of its own, for finalizing fresh copies of jobs' staging;
        started on first use and kept (jobs have distinct ids, so copies never meet)."""
        if self._spare is None:
            container = "fresh" + uuid.uuid4().hex[:16]
            ensure_container(self.azurite.connection_string, container)
            self._spare = (Aggregator(self.procs, self.aggregator_env(container),
                                      self.work / "aggregator-spare.log"), container)
        agg, container = self._spare
        if not agg.running:
            agg.start()
        return agg, container


@dataclass
class Drain:
    """How a shipper ended after SIGTERM."""

    status: int
    seconds: float
    stderr_tail: str


@dataclass
class Pod:
    """One job pod: its volume folder, its shipper sidecar, and the containers it ran."""

    rig: Rig
    job_id: str
    name: str
    phase: str
    volume: Path
    shipper_env: dict[str, str] = field(default_factory=dict)
    shipper: subprocess.Popen[bytes] | None = None
    shipper_runs: int = 0
    health_port: int = 0
    expected: dict[str, Expected] = field(default_factory=dict)
    exit_codes: dict[str, int] = field(default_factory=dict)

    @property
    def shipper_log(self) -> Path:
        return self.volume.parent / f"{self.name}.shipper.log"

    def env(self, grace: float | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "PYTHONPATH": str(ROOT),
            # What the injected sidecar gets (docs/protocol.md section 3) ...
            "BLAST_LOGS_JOB_ID": self.job_id,
            "BLAST_LOGS_POD": self.name,
            "BLAST_LOGS_NAMESPACE": NAMESPACE,
            "BLAST_LOGS_TOKEN": job_token(SECRET, self.job_id),
            "BLAST_LOGS_AGGREGATOR_URL": self.rig.urls,
            "BLAST_LOGS_PHASE": self.phase,
            # ... and what a host folder and a shared host need.
            "BLAST_LOGS_DIR": str(self.volume),
            # Its own port on this shared host: the rig waits for /healthz, which answers only once
            # the sidecar handles SIGTERM (bin/logwrap alone survives a restart, so it cannot tell).
            "BLAST_LOGS_METRICS_PORT": str(self.health_port),
        })
        if grace is not None:
            env["BLAST_LOGS_GRACE"] = str(grace)
        env.update(self.shipper_env)
        return env

    def start_shipper(self, grace: float | None = None) -> None:
        """Start (or restart, over the same volume and checkpoints) the sidecar; wait for bin/logwrap."""
        self.spawn_shipper(grace)
        self.wait_shipper_ready()

    def spawn_shipper(self, grace: float | None = None) -> None:
        self.volume.mkdir(parents=True, exist_ok=True)
        self.shipper_runs += 1
        self.health_port = free_port()
        with open(self.shipper_log, "ab") as f:
            f.write(f"=== shipper run {self.shipper_runs} ===\n".encode())
        self.shipper = self.rig.procs.spawn([sys.executable, "-m", "shipper", "run"], env=self.env(grace),
                                            log=self.shipper_log, cwd=ROOT)

    def wait_shipper_ready(self) -> None:
        """What the injected spec's startup probe checks: bin/logwrap is in place."""
        assert self.shipper is not None
        logwrap = self.volume / "bin" / "logwrap"
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not (os.access(logwrap, os.X_OK) and http_ok(f"http://127.0.0.1:{self.health_port}/healthz")):
            if self.shipper.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"shipper of {self.name} did not install logwrap: {self.tail_log()}")
            time.sleep(0.02)

    def tail_log(self, chars: int = 3000) -> str:
        try:
            return self.shipper_log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def kill_shipper(self) -> None:
        """kill -9 the sidecar (the kubelet restarts it later with `start_shipper`)."""
        if self.shipper is not None:
            kill_group(self.shipper, signal.SIGKILL)
            self.shipper.wait()

    def terminate_shipper(self, timeout: float = 120.0) -> Drain:
        """SIGTERM, as the kubelet does when the pod's last container ended; wait for the drain."""
        assert self.shipper is not None
        began = time.monotonic()
        kill_group(self.shipper, signal.SIGTERM)
        try:
            status = self.shipper.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(self.shipper, signal.SIGKILL)
            status = self.shipper.wait()
        return Drain(status, time.monotonic() - began, self.tail_log())

    def container_argv(self, container: str, argv: Sequence[str]) -> list[str]:
        return ["sh", str(self.volume / "bin" / "logwrap"), container, "--", *argv]

    def container_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["BLAST_LOGS_DIR"] = str(self.volume)
        return env

    def start_container(self, container: str, argv: Sequence[str], expected: Expected | None = None,
                        ) -> subprocess.Popen[bytes]:
        """Run CMD under logwrap; its own stdout (the `kubectl logs` copy) goes to a side file."""
        self.expected.setdefault(container, expected or Expected())
        return self.rig.procs.spawn(self.container_argv(container, argv), env=self.container_env(),
                                    log=self.volume.parent / f"{self.name}.{container}.stdout", cwd=self.volume)

    def run_container(self, container: str, argv: Sequence[str], expected: Expected | None = None) -> int:
        status = self.start_container(container, argv, expected).wait()
        self.exit_codes[container] = status
        return status

    def log_path(self, container: str) -> Path:
        return self.volume / "logs" / f"{container}.log"


class PodThread(threading.Thread):
    """Runs a pod's containers in order, as the kubelet would, keeping any error for the caller."""

    def __init__(self, pod: Pod, body: Callable[[Pod], None]) -> None:
        super().__init__(name=pod.name, daemon=True)
        self.pod = pod
        self.body = body
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.body(self.pod)
        except BaseException as e:
            self.error = e

    def join_checked(self, timeout: float = 600.0) -> None:
        self.join(timeout)
        if self.is_alive():
            raise TimeoutError(f"pod {self.pod.name} still running after {timeout}s")
        if self.error is not None:
            raise RuntimeError(f"pod {self.pod.name} failed") from self.error
