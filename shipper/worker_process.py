"""Starting sanitising worker processes, and how many: light enough to run first thing.

`blast-log-shipper run` starts its workers before it imports the rest of the shipper, so that the
two start-ups overlap (a worker's imports take about 0.1 s); `SanitiserPool` adopts them.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from shipper.config import ShipperConfig


def available_cpus(cgroup: Path = Path("/sys/fs/cgroup")) -> float:
    """CPUs this process may use: its affinity, capped by a cgroup CPU quota (v2 `cpu.max`, or v1
    `cpu.cfs_quota_us` / `cpu.cfs_period_us`), as Kubernetes sets from a container's CPU limit."""
    cpus = float(len(os.sched_getaffinity(0)))
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        try:
            quota = (cgroup / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (cgroup / "cpu" / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return cpus
    if quota in ("max", "-1"):
        return cpus
    try:
        return min(cpus, int(quota) / int(period))
    except (ValueError, ZeroDivisionError):
        return cpus


def auto_workers(cpus: float) -> int:
    """One worker when there is a second CPU for it; a worker under a one-CPU quota only adds
    the cost of handing chunks over."""
    return 1 if cpus >= 2 else 0


def worker_environment(environ: dict[str, str] | os._Environ[str]) -> dict[str, str]:
    """The shipper's environment without its own settings: the worker never sees the token."""
    return {k: v for k, v in environ.items() if not k.startswith("BLAST_LOGS_")}


def spawn_worker(max_line_chars: int) -> subprocess.Popen[bytes]:
    """Start `python -m shipper.sanitise_worker` with pipes for stdin and stdout (stderr shared)."""
    return subprocess.Popen(
        [sys.executable, "-m", "shipper.sanitise_worker", "--max-line-chars", str(max_line_chars)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=worker_environment(os.environ), close_fds=True)


@dataclass
class WorkerPlan:
    """How many workers this run gets, the CPUs that decided it, and those started already."""

    cpus: float
    count: int
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @classmethod
    def decide(cls, config: ShipperConfig) -> WorkerPlan:
        cpus = available_cpus()
        count = config.sanitise_workers if config.sanitise_workers is not None else auto_workers(cpus)
        return cls(cpus, count)

    def start(self, max_line_chars: int) -> None:
        """Start every worker now (the pool starts any that failed here later)."""
        for _ in range(self.count - len(self.started)):
            try:
                self.started.append(spawn_worker(max_line_chars))
            except OSError as exc:
                logging.getLogger("shipper.workers").error(
                    "cannot start a sanitising worker; sanitising in the shipper's own process",
                    extra={"error": str(exc)})
                return
