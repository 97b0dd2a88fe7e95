"""`blast-log-shipper run`: the watcher loop, the drain on SIGTERM, and the exit status.

Exit status: 0 when every stream's data and `eof` were acknowledged; 3 (`EXIT_UNDELIVERED`) when
the grace budget ran out first, with a message naming each stream and what it did not deliver;
128+N at once on a second signal N (checkpoints only ever describe delivered data, so nothing
needs saving).

Fail-open (`serve`): whatever the configuration, logwrap is installed and `/healthz` answers first;
with configuration problems the shipper waits in `standby` (re-reading its configuration) and ships
once it can; a SIGTERM meanwhile ends it at once with `EXIT_CONFIG`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from shipper.checkpoints import Checkpointer
from shipper.client import AggregatorClient
from shipper.config import EXIT_CONFIG, EXIT_UNDELIVERED, Loaded, ShipperConfig
from shipper.health import Health
from shipper.http import HttpClient
from shipper.metrics import ShipperMetrics, start_server
from shipper.openfiles import OpenFiles, effective_cap
from shipper.prepare import COMPILED
from shipper.signals import HANDLED, take_pending
from shipper.stream import Stream
from shipper.watcher import Watcher, scan
from shipper.worker_process import WorkerPlan
from shipper.workers import SanitiserPool

log = logging.getLogger("shipper.runner")

#: The folder is looked at no more often than every `SCAN_SHARE` times the last look took.
SCAN_SHARE = 4


@dataclass
class Parts:
    """What a `Runner` works with, made by `build_parts` (or by a test, in-process)."""

    metrics: ShipperMetrics
    checkpointer: Checkpointer
    client: AggregatorClient
    #: the sanitising workers, None for none
    pool: SanitiserPool | None
    #: the CPUs available, which decided the number of workers (logged)
    cpus: float


def build_parts(config: ShipperConfig, workers: WorkerPlan | None = None,
                metrics: ShipperMetrics | None = None) -> Parts:
    """The collaborators `blast-log-shipper run` uses; `workers` may have started already."""
    plan = workers if workers is not None else WorkerPlan.decide(config)
    metrics = metrics if metrics is not None else ShipperMetrics()
    client = AggregatorClient(
        HttpClient(), config.urls, config.token, timeout=config.request_timeout, use_gzip=config.gzip,
        backoff_base=config.backoff_base, backoff_max=config.backoff_max,
        retry_after_max=config.retry_after_max, reject_backoff=config.reject_backoff, metrics=metrics)
    pool = (SanitiserPool(plan.count, config.max_line_chars, plan.started, metrics)
            if plan.count else None)
    return Parts(metrics, Checkpointer(config.state_dir), client, pool, plan.cpus)


def install_logwrap_reporting(config: ShipperConfig, health: Health) -> None:
    """Install logwrap (blocking: run in a thread); a failure is a risk reported, not fatal."""
    from shipper.logwrap import install_logwrap

    try:
        path = install_logwrap(config.volume)
        config.logs_dir.mkdir(parents=True, exist_ok=True)
        config.state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        text = f"cannot install logwrap into {config.volume}: {exc}; wrapped containers will run uncaptured"
        if not health.ready:
            log.error("cannot install logwrap; wrapped containers will run uncaptured",
                      extra={"dir": str(config.volume), "error": str(exc)})
            print(f"blast-log-shipper run: {text}", file=sys.stderr, flush=True)
        health.risk("logwrap", text)
        return
    health.risk("logwrap", None)
    if not health.ready:
        log.info("logwrap installed", extra={"path": str(path)})
    health.ready = True


async def start_health_server(metrics: ShipperMetrics, config: ShipperConfig,
                              health: Health) -> asyncio.Server | None:
    """`/metrics`, `/healthz`, `/readyz`; a port that cannot be had is said, not fatal."""
    try:
        return await start_server(metrics, config.metrics_host, config.metrics_port, health.report)
    except OSError as exc:
        text = f"cannot serve /metrics and /healthz on {config.metrics_host}:{config.metrics_port}: {exc}"
        log.error("cannot serve metrics and health", extra={"error": str(exc)})
        print(f"blast-log-shipper run: {text}", file=sys.stderr, flush=True)
        health.risk("metrics", text)
        return None


class Runner:
    """Finds the streams, runs each, and drains them when told to (`start_drain`)."""

    def __init__(self, config: ShipperConfig, parts: Parts, health: Health | None = None,
                 *, own_server: bool = True) -> None:
        self.config = config
        self.metrics = parts.metrics
        self.health = health if health is not None else Health(parts.metrics)
        self.health.client = parts.client
        self.health.details = self._health
        #: `run` starts the metrics and health server (`serve` starts it earlier itself)
        self.own_server = own_server
        self.checkpointer = parts.checkpointer
        self.client = parts.client
        self.pool = parts.pool
        self.cpus = parts.cpus
        self.workers = parts.pool.size if parts.pool is not None else 0
        self.drain = asyncio.Event()
        self.drain_started = 0.0
        self.streams: dict[str, Stream] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.rejected_names: set[str] = set()
        self.watcher = Watcher()
        self.open_files = OpenFiles(effective_cap(config.max_open_files), parts.metrics)
        #: how long the last look at the folder took (the next waits at least `SCAN_SHARE` times it)
        self.scan_seconds = 0.0
        self._scan_error = ""

    def _on_signal(self, signum: int) -> None:
        if self.drain.is_set():
            log.error("second signal: exiting now; checkpoints hold only delivered data",
                      extra={"signal": signal.Signals(signum).name})
            sys.stdout.flush()
            os._exit(128 + signum)
        log.info("draining", extra={"signal": signal.Signals(signum).name, "grace": self.config.grace})
        self.start_drain()

    def start_drain(self) -> None:
        """Read every file to its end, deliver, send each stream's eof, and return from `run`."""
        self.drain_started = time.monotonic()
        self.drain.set()
        for stream in self.streams.values():
            stream.wake()

    async def _discover(self) -> None:
        from shipper.sanitise import Sanitiser

        started = time.monotonic()
        try:
            found = await asyncio.to_thread(scan, self.config.logs_dir)
        except OSError as exc:  # EMFILE, EACCES: the streams found so far go on; look again later
            if exc.strerror != self._scan_error:
                log.error("cannot list the log folder; trying again",
                          extra={"dir": str(self.config.logs_dir), "error": exc.strerror})
            self._scan_error = exc.strerror or ""
            return
        self._scan_error = ""
        self.scan_seconds = time.monotonic() - started
        containers, bad = found.containers, found.bad
        for name in bad:
            if name not in self.rejected_names:
                self.rejected_names.add(name)
                log.error("log file name is not a valid container name; not shipped", extra={"file": name})
        for container in containers:
            if container in self.streams:
                continue
            stream = Stream(container, self.config, self.client, self.checkpointer, self.metrics,
                            Sanitiser(max_chars=self.config.max_line_chars), self.drain, self.pool,
                            on_risk=self.health.risk, open_files=self.open_files)
            self.streams[container] = stream
            self.tasks[container] = asyncio.create_task(self._run_stream(stream), name=container)
            self.metrics.streams.set(len(self.streams))
            log.info("stream found", extra={"stream": stream.name, "resume_off": stream.acked_off,
                                            "seq": stream.seq})
        for container in self.watcher.changed(found):
            if (changed := self.streams.get(container)) is not None:
                changed.wake()

    async def _run_stream(self, stream: Stream) -> None:
        try:
            await stream.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("stream failed", extra={"stream": stream.name})
            raise

    def _health(self) -> dict[str, object]:
        return {"streams": len(self.streams), "draining": self.drain.is_set()}

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT drain (a second one exits at once); those that came early count too."""
        loop = asyncio.get_running_loop()
        for sig in HANDLED:
            loop.add_signal_handler(sig, self._on_signal, sig)
        for signum in take_pending():  # arrived while the program was still starting
            self._on_signal(signum)

    async def run(self) -> int:
        """Ship until the drain is over; the exit status (0, or `EXIT_UNDELIVERED`)."""
        cfg = self.config
        await asyncio.to_thread(install_logwrap_reporting, cfg, self.health)  # and logs/, state/
        server = (await start_health_server(self.metrics, cfg, self.health) if self.own_server
                  else None)
        if self.pool is not None:
            await self.pool.start()
        log.info("shipper started", extra={
            "dir": str(cfg.volume), "aggregators": list(cfg.urls), "job_id": cfg.job_id, "pod": cfg.pod,
            "namespace": cfg.namespace, "phase": cfg.phase,
            "metrics": f"{cfg.metrics_host}:{cfg.metrics_port}" if cfg.metrics_port else "off",
            "sanitise_workers": self.workers, "cpus": round(self.cpus, 2), "compiled_hot_path": COMPILED})
        try:
            while not self.drain.is_set():
                await self._discover()
                try:
                    # Thousands of files: a look may not take more than a share of the time.
                    await asyncio.wait_for(self.drain.wait(), max(cfg.poll_interval, SCAN_SHARE * self.scan_seconds))
                except TimeoutError:
                    pass
            await self._discover()
            return await self._finish_drain()
        finally:
            await self.client.http.close()
            if self.pool is not None:
                await self.pool.close()
            if server is not None:
                server.close()
                await server.wait_closed()

    async def _finish_drain(self) -> int:
        remaining = self.drain_started + self.config.grace - time.monotonic()
        tasks = list(self.tasks.values())
        pending: set[asyncio.Task[None]] = set()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=max(remaining, 0.0))
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
        failed = [name for name, t in self.tasks.items()
                  if t.done() and not t.cancelled() and t.exception() is not None]
        short = [s for name, s in self.streams.items()
                 if self.tasks[name] in pending or name in failed]
        if not short:
            log.info("drained: every stream delivered", extra={
                "streams": sorted(self.streams), "seconds": round(time.monotonic() - self.drain_started, 3)})
            return 0
        lines = [s.undelivered().describe() for s in short]
        msg = (f"blast-log-shipper: grace budget of {self.config.grace:g}s ran out; not delivered to "
               f"{', '.join(self.config.urls)}:\n  " + "\n  ".join(lines))
        log.error("drain incomplete", extra={"undelivered": [vars(s.undelivered()) for s in short]})
        print(msg, file=sys.stderr, flush=True)
        return EXIT_UNDELIVERED


async def serve(loaded: Loaded, workers: WorkerPlan | None = None,
                reload: Callable[[], Loaded] | None = None) -> int:
    """Install logwrap and answer `/healthz` whatever the configuration; wait in `standby` while
    it cannot ship; then ship until the drain is over. The exit status."""
    from shipper import diskuse
    from shipper.standby import standby

    metrics = ShipperMetrics()
    health = Health(metrics, loaded.problems, loaded.warnings)
    await asyncio.to_thread(install_logwrap_reporting, loaded.config, health)
    server = await start_health_server(metrics, loaded.config, health)
    # Also while not shipping: the logs pile up then, and that is when the pod is at risk.
    disk = asyncio.create_task(diskuse.watch(loaded.config.logs_dir, loaded.config.volume_limit_bytes,
                                             metrics, health.risk), name="disk use")
    try:
        if loaded.problems:
            ready = await standby(loaded, reload, health)
            if ready is None:
                return EXIT_CONFIG
            loaded = ready
            workers = None
        runner = Runner(loaded.config, build_parts(loaded.config, workers, metrics), health,
                        own_server=False)
        runner.install_signal_handlers()
        return await runner.run()
    finally:
        disk.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await disk
        if server is not None:
            server.close()
            await server.wait_closed()


def run(loaded: Loaded | ShipperConfig, workers: WorkerPlan | None = None,
        reload: Callable[[], Loaded] | None = None) -> int:
    """`blast-log-shipper run` once its configuration is read."""
    if isinstance(loaded, ShipperConfig):
        loaded = Loaded(loaded)
    return asyncio.run(serve(loaded, workers, reload))
