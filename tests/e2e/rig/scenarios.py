"""The ten reliability scenarios of issue 5, each a real job on the rig, each accounted line by line.

Every scenario runs one job (three pods) on the shared `Rig`, injects its fault, finalizes, reads the
artifacts back from Azurite and compares them with what the wrapped programs wrote. `run_scenario`
returns a `ScenarioResult`: the numbers for the table and every check with its verdict.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aggregator.client import FinalizeResult, finalize_sync
from blastlogs.protocol import DEFAULT_PHASE_TABLE, MAX_LINE_CHARS
from rig.accounting import StreamCount, compare_lines, split_log, total
from rig.storage import Artifacts, copy_staging, read_artifacts
from rig.topology import ADMIN_TOKEN, FINALIZE_TIMEOUT_MARGIN, Drain, Expected, Pod, PodThread, Rig
from rig.workload import (
    blastn_argv,
    huge_line_expected,
    make_blast_inputs,
    makeblastdb_argv,
    messy_source,
    raw_writer_argv,
    writer_argv,
)

#: After blast-0's results-export starts, blast-1 waits this long, so its streams come last in the
#: running phase and its BLAST error sits in `last_output`'s tail.
SECOND_POD_DELAY = 1.0
#: Lines of the short writer in the failing BLAST pod's results-export.
SHORT_EXPORT_LINES = 3
#: finalize's wait for every stream's eof once the pods are done.
FINALIZE_WAIT = 30.0


@dataclass(frozen=True)
class Size:
    """How big a run is: full size for bench/reliability.py, reduced for CI."""

    name: str
    setup_lines: int
    export_lines: int
    rate: float
    backlog_lines: int
    outage_seconds: float
    huge_bytes: int
    unreachable_grace: float

    @property
    def export_seconds(self) -> float:
        return self.export_lines / self.rate


FULL = Size("full", setup_lines=20_000, export_lines=100_000, rate=10_000, backlog_lines=200_000,
            outage_seconds=10.0, huge_bytes=20 * 1024 * 1024, unreachable_grace=10.0)
CI = Size("ci", setup_lines=1_000, export_lines=4_000, rate=2_000, backlog_lines=10_000,
          outage_seconds=3.0, huge_bytes=20 * 1024 * 1024, unreachable_grace=3.0)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclass
class ScenarioResult:
    number: int
    title: str
    job_id: str = ""
    written: int = 0
    stored: int = 0
    lost: int = 0
    duplicated: int = 0
    invented: int = 0
    undelivered: int = 0
    drain_seconds: float = 0.0
    seconds: float = 0.0
    checks: list[Check] = field(default_factory=list)
    timeline: list[tuple[float, str]] = field(default_factory=list)
    began: float = field(default_factory=time.monotonic)

    def mark(self, what: str) -> None:
        """Note when a step happened (seconds since the scenario began), for the report."""
        self.timeline.append((time.monotonic() - self.began, what))

    def story(self) -> str:
        return " | ".join(f"{t:.1f}s {what}" for t, what in self.timeline)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks) and bool(self.checks)

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append(Check(name, bool(ok), detail))
        return bool(ok)

    def failures(self) -> str:
        return "\n".join(f"  FAIL {c.name}: {c.detail}" for c in self.checks if not c.ok)


class Job:
    """One BLAST job: a setup pod (get-blastdb, import-query-batches) and two BLAST pods (blast,
    results-export); blast-1's BLAST gets a bad option, prints its real error and exits 1."""

    def __init__(self, rig: Rig, size: Size, number: int) -> None:
        self.rig = rig
        self.size = size
        self.job_id = f"rig-s{number}-{uuid.uuid4().hex[:8]}"
        self.work = rig.work / self.job_id
        self.inputs = make_blast_inputs(self.work / "inputs")
        suffix = uuid.uuid4().hex[:5]

        def pod(name: str, phase: str) -> Pod:
            return Pod(rig, self.job_id, name, phase, self.work / "pods" / name / "volume")

        self.setup = pod(f"elb-setup-{suffix}", "staging_db")
        self.blast0 = pod(f"blastn-batch-0-{suffix}", "running")
        self.blast1 = pod(f"blastn-batch-1-{suffix}", "running")
        self.pods = [self.setup, self.blast0, self.blast1]
        self.db_ready = threading.Event()
        self.export_started = threading.Event()
        self.export_body: Callable[[Pod], None] = self.default_export
        self.paused: set[str] = set()
        self.last_artifacts: Artifacts | None = None
        self.mark: Callable[[str], None] = lambda what: None

    def record(self, name: str) -> Path:
        return self.work / f"{name}.record"

    # -- the pods' containers ------------------------------------------------------------------
    def setup_body(self, pod: Pod) -> None:
        pod.run_container("get-blastdb", makeblastdb_argv(self.inputs))
        self.mark("database made")
        self.db_ready.set()
        rec = self.record("import-query-batches")
        pod.run_container("import-query-batches",
                          writer_argv("iqb", self.size.setup_lines, rec, rate=self.size.rate), Expected(record=rec))

    def default_export(self, pod: Pod) -> None:
        rec = self.record("rx0")
        pod.run_container("results-export", writer_argv("rx0", self.size.export_lines, rec, rate=self.size.rate),
                          Expected(record=rec))

    def blast0_body(self, pod: Pod) -> None:
        self.db_ready.wait()
        pod.run_container("blast", blastn_argv(self.inputs))
        self.mark("results-export starts")
        self.export_started.set()
        self.export_body(pod)
        self.mark("results-export ended")

    def blast1_body(self, pod: Pod) -> None:
        self.export_started.wait()
        time.sleep(SECOND_POD_DELAY)
        pod.run_container("blast", blastn_argv(self.inputs, bad_option=True))
        rec = self.record("rx1")
        pod.run_container("results-export", writer_argv("rx1", SHORT_EXPORT_LINES, rec, width=20),
                          Expected(record=rec))

    # -- the job's life ------------------------------------------------------------------------
    def start_shippers(self, grace: dict[str, float] | None = None) -> None:
        for p in self.pods:
            p.spawn_shipper((grace or {}).get(p.name))
        for p in self.pods:
            p.wait_shipper_ready()
        self.mark("sidecars up")

    def run_pods(self, during: Callable[[Job], None] | None = None,
                 pods: list[tuple[Pod, Callable[[Pod], None]]] | None = None) -> None:
        threads = [PodThread(p, body) for p, body in (pods or [
            (self.setup, self.setup_body), (self.blast0, self.blast0_body), (self.blast1, self.blast1_body)])]
        for t in threads:
            t.start()
        try:
            if during is not None:
                during(self)
        except BaseException:
            # Unblock the pods waiting on these, so they end and the fault surfaces.
            self.db_ready.set()
            self.export_started.set()
            raise
        finally:
            for t in threads:
                t.join_checked()
            self.mark("pods done")

    def terminate(self, pods: list[Pod] | None = None) -> dict[str, Drain]:
        """SIGTERM every sidecar at once (a paused one is continued right after), wait for the drains."""
        chosen = pods or self.pods

        def one(p: Pod) -> Drain:
            if p.name in self.paused and p.shipper is not None:
                import os
                import signal

                began = time.monotonic()
                os.killpg(p.shipper.pid, signal.SIGTERM)
                os.killpg(p.shipper.pid, signal.SIGCONT)
                status = p.shipper.wait(timeout=300)
                return Drain(status, time.monotonic() - began, p.tail_log())
            return p.terminate_shipper()

        with concurrent.futures.ThreadPoolExecutor(len(chosen)) as pool:
            drains = dict(zip([p.name for p in chosen], pool.map(one, chosen), strict=True))
        self.mark("sidecars drained")
        return drains

    def finalize(self, replica: int = 1, wait: float = FINALIZE_WAIT) -> FinalizeResult:
        fin = self.rig.finalize(replica, self.job_id, wait)
        self.mark(f"finalize on replica {replica}: {fin.status}")
        return fin

    def artifacts(self) -> Artifacts:
        arts = read_artifacts(self.rig.storage(), self.job_id)
        self.mark(f"read {len(arts.raw)} artifacts")
        return arts


# -- verification ---------------------------------------------------------------------------------

def feeds(container: str, default_phase: str) -> tuple[str, ...]:
    entry = DEFAULT_PHASE_TABLE.get(container)
    return entry["feeds"] if entry else (default_phase,)


def expected_lines(pod: Pod, container: str) -> list[str]:
    exp = pod.expected.get(container, Expected())
    if exp.lines is not None:
        return list(exp.lines)
    path = exp.record if exp.record is not None else pod.log_path(container)
    return split_log(path.read_bytes())


def account(job: Job, res: ScenarioResult, arts: Artifacts, incomplete: set[tuple[str, str]]) -> StreamCount:
    """Compare every stream in every phase it feeds; fill the row's numbers; add the checks."""
    per_stream: list[StreamCount] = []
    details: list[str] = []
    known: set[tuple[str, str]] = set()
    for pod in job.pods:
        for container in pod.expected:
            known.add((pod.name, container))
            want = expected_lines(pod, container)
            counts = [compare_lines(want, arts.stream_lines(phase, pod.name, container))
                      for phase in feeds(container, pod.phase)]
            per_stream += counts
            # A line counts once per stream: lost (or duplicated...) when it is so in any phase it feeds.
            res.written += counts[0].written
            res.stored += counts[0].stored
            lost = max(c.lost for c in counts)
            named = (pod.name, container) in incomplete
            if named:
                res.undelivered += lost
            else:
                res.lost += lost
            res.duplicated += max(c.duplicated for c in counts)
            res.invented += max(c.invented for c in counts)
            for phase, c in zip(feeds(container, pod.phase), counts, strict=True):
                if not c.clean and not (named and c.lost and not (c.duplicated or c.invented)):
                    details.append(f"{phase}/{pod.name}/{container}: {c}")
    foreign = [(phase, e["pod"], e["container"]) for phase, evs in arts.events.items() for e in evs
               if (e["pod"], e["container"]) not in known]
    res.invented += len(foreign)
    res.check("artifacts well formed", not arts.problems, "; ".join(arts.problems[:5]))
    res.check("no line lost, duplicated or invented; no marker; order kept", not details and not foreign,
              "; ".join(details[:6]) + (f"; foreign streams: {sorted(set(foreign))[:5]}" if foreign else ""))
    return total(per_stream)


def check_logwrap_records(job: Job, res: ScenarioResult) -> None:
    """The writer's own record and logwrap's log agree: logwrap lost and added nothing."""
    bad = []
    for pod in job.pods:
        for container, exp in pod.expected.items():
            if exp.record is not None and split_log(exp.record.read_bytes()) != split_log(
                    pod.log_path(container).read_bytes()):
                bad.append(f"{pod.name}/{container}")
    res.check("logwrap log equals the writer's record", not bad, ", ".join(bad))


def check_summary(job: Job, res: ScenarioResult, body: dict[str, Any], *, complete: bool = True) -> None:
    res.check(f"finalize complete is {complete}", body.get("complete") is complete,
              f"complete={body.get('complete')} incomplete={body.get('incomplete_streams')}")
    steps = body.get("steps", {})
    wrong = []
    for pod in job.pods:
        for container, code in pod.exit_codes.items():
            for phase in feeds(container, pod.phase):
                rows = [c for c in steps.get(phase, {}).get("containers", [])
                        if c.get("pod") == pod.name and c.get("container") == container]
                if not rows or rows[0].get("exit_code") != code:
                    wrong.append(f"{phase}/{pod.name}/{container}: want {code}, got {rows[:1]}")
    res.check("exit codes in the summary", not wrong, "; ".join(wrong[:4]))


def check_blast_error(job: Job, res: ScenarioResult, body: dict[str, Any]) -> None:
    """The good BLAST run searched the database; the running phase's last_output holds the failing run's
    own last (error) line, then `[exit code 1]`."""
    good = job.blast0.log_path("blast")
    hits = good.exists() and "hits found" in good.read_text(errors="replace")
    res.check("the good BLAST run searched the database (exit 0, hits)", hits and job.blast0.exit_codes.get("blast") == 0,
              f"exit {job.blast0.exit_codes.get('blast')}")
    lines = split_log(job.blast1.log_path("blast").read_bytes())
    errors = [line for line in lines if line.startswith("Error")]
    last_output = body.get("steps", {}).get("running", {}).get("last_output", "")
    ok = bool(errors) and f"{lines[-1]}\n[exit code {job.blast1.exit_codes.get('blast')}]" in last_output
    res.check("BLAST's error line and exit code in running last_output",
              ok and job.blast1.exit_codes.get("blast", 0) != 0,
              f"BLAST wrote {errors[-1:]!r}, exit {job.blast1.exit_codes.get('blast')}; "
              f"last_output tail: {last_output[-300:]!r}")


def check_drains(res: ScenarioResult, drains: dict[str, Drain]) -> None:
    bad = {name: d for name, d in drains.items() if d.status != 0}
    res.check("every shipper drained and exited 0", not bad,
              "; ".join(f"{n}: status {d.status}: {d.stderr_tail[-400:]}" for n, d in bad.items()))
    res.drain_seconds = max((d.seconds for d in drains.values()), default=0.0)


def finish_clean(job: Job, res: ScenarioResult, drains: dict[str, Drain], *, replica: int = 1,
                 blast_error: bool = True) -> dict[str, Any]:
    """The usual end: shippers drained, one finalize, everything accounted; the summary's body.

    `blast_error=False` where the fault reorders the running phase's streams (a stream's order is its
    first line's read time, and a restarted or paused sidecar reads late), so the failing BLAST pod's
    block need not be in last_output's tail."""
    check_drains(res, drains)
    fin = job.finalize(replica)
    if not res.check("finalize answered 200", fin.ok, f"{fin.status} {fin.error}"):
        return {}
    body = fin.body or {}
    arts = job.artifacts()
    job.last_artifacts = arts
    account(job, res, arts, set())
    check_summary(job, res, body)
    check_logwrap_records(job, res)
    if blast_error:
        check_blast_error(job, res, body)
    return body


def fresh_copy_matches(job: Job, res: ScenarioResult) -> None:
    """One late finalize over a fresh copy of the staged batches gives the same artifacts, byte for byte."""
    rig = job.rig
    agg, fresh = rig.spare()
    job.mark("spare replica up")
    copied = copy_staging(rig.storage(), rig.storage(fresh), job.job_id)
    job.mark(f"copied {copied} staged objects")
    fin = finalize_sync(agg.url, ADMIN_TOKEN, job.job_id, wait_seconds=5.0, timeout=FINALIZE_TIMEOUT_MARGIN)
    job.mark(f"finalize on the fresh copy: {fin.status}")
    ours = job.artifacts().raw
    theirs = read_artifacts(rig.storage(fresh), job.job_id).raw
    differ = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
    res.check("same artifacts as one late finalize on a fresh copy (bytes)", fin.ok and not differ and bool(ours),
              f"copied {copied} staged objects; finalize {fin.status} {fin.error}; "
              f"{len(differ)} of {len(set(ours) | set(theirs))} objects differ: {differ[:4]}")


# -- the scenarios ----------------------------------------------------------------------------------

def wait_into_export(job: Job, fraction: float) -> None:
    """Block until blast-0's results-export has been writing for `fraction` of its planned time."""
    job.export_started.wait(timeout=300)
    time.sleep(job.size.export_seconds * fraction)


def wait_staged(job: Job, pod: str, container: str, count: int, timeout: float = 30.0) -> int:
    """Wait until the stream has `count` staged batches (its announcement and some lines), so a fault
    that follows cuts it mid-stream; the count seen (the rig goes on after `timeout` regardless)."""
    prefix = f"{job.job_id}/execution-steps/_staging/{pod}/{container}/"
    deadline = time.monotonic() + timeout
    while True:
        seen = sum(1 for _ in job.rig.storage().list_blobs(name_starts_with=prefix))
        if seen >= count or time.monotonic() > deadline:
            return seen
        time.sleep(0.05)


def s1_clean(job: Job, res: ScenarioResult) -> None:
    job.start_shippers()
    job.run_pods()
    finish_clean(job, res, job.terminate())
    if job.last_artifacts is not None:
        control_check(job, res, job.last_artifacts)


def control_check(job: Job, res: ScenarioResult, arts: Artifacts) -> None:
    """The accounting is not blind: the stored events with one line removed, one repeated and one
    foreign must count as 1 lost, 1 duplicated, 1 invented."""
    events = {phase: list(evs) for phase, evs in arts.events.items()}
    running = events["running"]
    mine = [i for i, e in enumerate(running) if e["pod"] == job.blast0.name and e["container"] == "results-export"]
    removed, repeated = mine[len(mine) // 3], mine[2 * len(mine) // 3]
    running.insert(repeated, dict(running[repeated]))
    running.insert(repeated, {**running[repeated], "line": "a line nobody wrote"})
    del running[removed]
    probe = ScenarioResult(0, "control")
    account(job, probe, Artifacts(raw={}, events=events, summary=None, problems=[]), set())
    res.check("control: the accounting counts a removed, a repeated and a foreign line",
              (probe.lost, probe.duplicated, probe.invented) == (1, 1, 1),
              f"lost {probe.lost}, duplicated {probe.duplicated}, invented {probe.invented}")


def s2_shipper_kill(job: Job, res: ScenarioResult) -> None:
    def during(j: Job) -> None:
        wait_into_export(j, 0.25)
        j.blast0.kill_shipper()
        j.mark("shipper killed")
        j.blast0.start_shipper()  # the new sidecar's start-up is the outage: the writer goes on meanwhile
        j.mark("shipper restarted")
        rec = j.record("rx0")
        appended = len(split_log(rec.read_bytes())) if rec.exists() else 0
        res.check("writer still appending when the restarted shipper is up", appended < j.size.export_lines,
                  f"{appended} of {j.size.export_lines} lines written by then")

    job.start_shippers()
    job.run_pods(during)
    finish_clean(job, res, job.terminate(), blast_error=False)


def s3_aggregator_kill(job: Job, res: ScenarioResult) -> None:
    def during(j: Job) -> None:
        wait_into_export(j, 0.3)
        j.rig.aggregators[0].kill()
        j.mark("replica 0 killed")

    job.start_shippers()
    job.run_pods(during)
    finish_clean(job, res, job.terminate(), replica=1)


def s4_azurite_outage(job: Job, res: ScenarioResult) -> None:
    def during(j: Job) -> None:
        wait_into_export(j, 0.2)
        j.rig.azurite.stop()
        j.mark("Azurite stopped")
        time.sleep(j.size.outage_seconds)
        j.rig.azurite.start()
        j.mark("Azurite started")

    job.start_shippers()
    job.run_pods(during)
    finish_clean(job, res, job.terminate())


def s5_backlog(job: Job, res: ScenarioResult) -> None:
    rec = job.record("rx0")

    def export(pod: Pod) -> None:
        # The sidecar is paused while the writer dumps the backlog: all of it is unread at SIGTERM.
        assert pod.shipper is not None
        import os
        import signal

        os.killpg(pod.shipper.pid, signal.SIGSTOP)
        job.paused.add(pod.name)
        pod.run_container("results-export", writer_argv("rx0", job.size.backlog_lines, rec), Expected(record=rec))

    job.export_body = export
    job.start_shippers()
    job.run_pods()
    drains = job.terminate()
    finish_clean(job, res, drains, blast_error=False)
    res.drain_seconds = drains[job.blast0.name].seconds


def s6_huge_messy(job: Job, res: ScenarioResult) -> None:
    data, want = messy_source(200)
    source = job.work / "messy.bin"
    source.write_bytes(data)
    expected = (*want, huge_line_expected(job.size.huge_bytes, MAX_LINE_CHARS))

    def export(pod: Pod) -> None:
        pod.run_container("results-export", raw_writer_argv(source, job.size.huge_bytes), Expected(lines=expected))

    job.export_body = export
    job.start_shippers()
    job.run_pods()
    finish_clean(job, res, job.terminate())
    log_size = job.blast0.log_path("results-export").stat().st_size
    res.check("the huge line reached the log whole", log_size == len(data) + job.size.huge_bytes,
              f"log {log_size} bytes, wrote {len(data) + job.size.huge_bytes}")


def s7_container_restart(job: Job, res: ScenarioResult) -> None:
    rec = job.record("rx0")
    half = job.size.export_lines // 2

    def export(pod: Pod) -> None:
        first = pod.run_container("results-export", writer_argv("rx0", half, rec, rate=job.size.rate, exit_code=1),
                                  Expected(record=rec))
        res.check("first run of the container failed (exit 1)", first == 1, f"status {first}")
        pod.run_container("results-export", writer_argv("rx0", job.size.export_lines - half, rec,
                                                        rate=job.size.rate, start=half), Expected(record=rec))

    job.export_body = export
    job.start_shippers()
    job.run_pods()
    finish_clean(job, res, job.terminate())


def s8_early_finalize(job: Job, res: ScenarioResult) -> None:
    def during(j: Job) -> None:
        wait_into_export(j, 0.3)
        existing = {(p.name, f.stem) for p in j.pods for f in (p.volume / "logs").glob("*.log")}
        for pod, container in sorted(existing):  # every sidecar has announced the streams it saw
            wait_staged(j, pod, container, 1)
        early = j.finalize(replica=0, wait=0.0)
        if not res.check("early finalize answered 200", early.ok, f"{early.status} {early.error}"):
            return
        body = early.body or {}
        named = {(s["pod"], s["container"]) for s in body.get("incomplete_streams", [])}
        everything = {(p.name, c) for p in j.pods for c in ("get-blastdb", "import-query-batches", "blast",
                                                            "results-export")}
        res.check("early finalize: complete is false", body.get("complete") is False, str(body.get("complete")))
        res.check("early finalize names the unfinished streams",
                  existing <= named <= everything and (j.blast0.name, "results-export") in named,
                  f"named {sorted(named)}, logs then {sorted(existing)}")

    job.start_shippers()
    job.run_pods(during)
    finish_clean(job, res, job.terminate())
    fresh_copy_matches(job, res)


def s9_concurrent_finalize(job: Job, res: ScenarioResult) -> None:
    job.start_shippers()
    job.run_pods()
    drains = job.terminate()
    check_drains(res, drains)
    barrier = threading.Barrier(2)

    def on(replica: int) -> FinalizeResult:
        barrier.wait()
        return job.finalize(replica)

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        a, b = pool.map(on, (0, 1))
    res.check("both finalizes answered 200", a.ok and b.ok, f"{a.status} {a.error} / {b.status} {b.error}")
    res.check("both answered the same summary", a.body == b.body and a.body is not None)
    body = a.body or {}
    account(job, res, job.artifacts(), set())
    check_summary(job, res, body)
    check_blast_error(job, res, body)
    fresh_copy_matches(job, res)


def s10_unreachable(job: Job, res: ScenarioResult) -> None:
    rig = job.rig
    grace = job.size.unreachable_grace
    job.start_shippers({job.blast0.name: grace})
    # The setup pod and the failing BLAST pod finish first, normally.
    job.run_pods(pods=[(job.setup, job.setup_body)])
    job.export_started.set()
    job.run_pods(pods=[(job.blast1, job.blast1_body)])
    check_drains(res, job.terminate([job.setup, job.blast1]))

    def during(j: Job) -> None:
        wait_into_export(j, 0.2)
        staged = wait_staged(j, j.blast0.name, "results-export", 2)
        j.mark(f"{staged} batches of results-export staged")
        for agg in rig.aggregators:
            agg.kill()
        j.mark("both replicas killed")

    job.export_started.clear()
    job.run_pods(during, pods=[(job.blast0, job.blast0_body)])
    drain = job.terminate([job.blast0])[job.blast0.name]
    res.drain_seconds = drain.seconds
    res.check("the cut-off shipper exits non-zero", drain.status != 0, f"status {drain.status}")
    res.check("it names what it could not deliver",
              "not delivered" in drain.stderr_tail and "results-export" in drain.stderr_tail,
              drain.stderr_tail[-500:])
    rig.ensure_up()
    job.mark("replicas restarted")
    fin = job.finalize(replica=0, wait=0.0)
    if not res.check("finalize answered 200", fin.ok, f"{fin.status} {fin.error}"):
        return
    body = fin.body or {}
    named = {(s["pod"], s["container"]) for s in body.get("incomplete_streams", [])}
    res.check("finalize reports the stream incomplete",
              body.get("complete") is False and (job.blast0.name, "results-export") in named
              and all(p == job.blast0.name for p, _ in named), f"named {sorted(named)}")
    account(job, res, job.artifacts(), named)
    res.check("some lines were really undelivered (the fault bit)", res.undelivered > 0, str(res.undelivered))
    check_logwrap_records(job, res)


SCENARIOS: dict[int, tuple[str, Callable[[Job, ScenarioResult], None]]] = {
    1: ("clean run", s1_clean),
    2: ("shipper kill -9 mid-stream, restarted", s2_shipper_kill),
    3: ("aggregator replica kill -9 during ingest", s3_aggregator_kill),
    4: ("Azurite stopped and restarted", s4_azurite_outage),
    5: ("SIGTERM with a backlog", s5_backlog),
    6: ("20 MiB line without newline, bad UTF-8, ANSI", s6_huge_messy),
    7: ("container restart appends to its log", s7_container_restart),
    8: ("finalize before the pods finished, then after", s8_early_finalize),
    9: ("finalize on both replicas at once", s9_concurrent_finalize),
    10: ("aggregators unreachable for the whole grace", s10_unreachable),
}


def run_scenario(rig: Rig, number: int, size: Size) -> ScenarioResult:
    """Run one scenario on `rig` (restarting whatever an earlier one left down); never raises for a
    failed check, only records it."""
    title, body = SCENARIOS[number]
    res = ScenarioResult(number, title)
    began = time.monotonic()
    rig.ensure_up()
    job = Job(rig, size, number)
    job.mark = res.mark
    res.job_id = job.job_id
    try:
        body(job, res)
    except Exception as e:
        res.check("scenario ran to the end", False, f"{type(e).__name__}: {e}")
    finally:
        for pod in job.pods:
            if pod.shipper is not None and pod.shipper.poll() is None:
                pod.kill_shipper()
    res.seconds = time.monotonic() - began
    return res


def table(results: list[ScenarioResult]) -> str:
    """The results as a Markdown table."""
    head = ("| # | scenario | lines written | stored | lost | duplicated | invented | undelivered (reported) "
            "| drain s | result |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---|\n")
    rows = [f"| {r.number} | {r.title} | {r.written:,} | {r.stored:,} | {r.lost} | {r.duplicated} | {r.invented} "
            f"| {r.undelivered:,} | {r.drain_seconds:.2f} | {'pass' if r.ok else 'FAIL'} |" for r in results]
    return head + "\n".join(rows) + "\n"
