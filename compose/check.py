"""The compose rig's one-shot check: runs in the aggregator image once the job "pod" has ended.

It waits for the BLAST container's exit file, checks that both aggregator replicas are alive and
ready, calls finalize (admin token) through the job API's own client on one replica and again on
the other, prints the summary, and checks what the job page and the artifacts must show:
BLAST's own error line and exit code in the running phase's `last_output`, a complete job, the
same summary from both replicas, and every line the BLAST container wrote (its log file in the
shared volume) stored exactly once, in order, in the chunk artifacts in Azurite.
Exit status 0 when every expectation holds, 1 otherwise (each failure named on stderr).
Configured by CHECK_* environment variables (docker-compose.yml's `check` service).
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from azure.storage.blob import ContainerClient

from aggregator.client import FinalizeResult, finalize_sync

DEFAULT_EXPECT_ERROR = 'Error: Unknown argument: "no_such_option"'
DEFAULT_EXPECT_EXIT = 1
DEFAULT_TIMEOUT = 180.0
FINALIZE_WAIT_SECONDS = 30.0
POLL_SECONDS = 0.5


@dataclass
class Settings:
    aggregators: list[str]
    admin_token: str
    job_id: str
    pod: str
    container: str
    logs_dir: Path
    connection_string: str
    azure_container: str
    expect_error: str
    expect_exit: int
    timeout: float

    @classmethod
    def from_env(cls, env: dict[str, str]) -> Settings:
        def need(name: str) -> str:
            value = env.get(name, "")
            if not value:
                raise SystemExit(f"check: {name} is not set")
            return value

        return cls(
            aggregators=[u.strip().rstrip("/") for u in need("CHECK_AGGREGATORS").split(",") if u.strip()],
            admin_token=need("CHECK_ADMIN_TOKEN"),
            job_id=need("CHECK_JOB_ID"),
            pod=need("CHECK_POD"),
            container=env.get("CHECK_CONTAINER", "blast"),
            logs_dir=Path(env.get("CHECK_LOGS_DIR", "/var/run/blast-logs/logs")),
            connection_string=need("CHECK_AZURE_CONNECTION_STRING"),
            azure_container=need("CHECK_AZURE_CONTAINER"),
            expect_error=env.get("CHECK_EXPECT_ERROR", DEFAULT_EXPECT_ERROR),
            expect_exit=int(env.get("CHECK_EXPECT_EXIT", str(DEFAULT_EXPECT_EXIT))),
            timeout=float(env.get("CHECK_TIMEOUT", str(DEFAULT_TIMEOUT))),
        )


@dataclass
class Report:
    failures: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def expect(self, ok: bool, what: str) -> None:
        elapsed = time.monotonic() - self.started
        print(f"check: {'ok  ' if ok else 'FAIL'} [{elapsed:5.1f}s] {what}", file=sys.stderr, flush=True)
        if not ok:
            self.failures.append(what)


def wait_for_exit_file(path: Path, deadline: float) -> int | None:
    """The exit code logwrap recorded, once the wrapped container's last run has ended."""
    while time.monotonic() < deadline:
        try:
            return int(path.read_text().strip())
        except (FileNotFoundError, ValueError):
            time.sleep(POLL_SECONDS)
    return None


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except OSError:
        return None


def wait_healthy(base: str, deadline: float) -> tuple[int | None, int | None]:
    """(/healthz, /readyz) statuses, waiting until both are 200 or the deadline passes."""
    health = ready = None
    while time.monotonic() < deadline:
        health, ready = http_status(base + "/healthz"), http_status(base + "/readyz")
        if health == ready == 200:
            break
        time.sleep(POLL_SECONDS)
    return health, ready


def log_lines(path: Path) -> list[str]:
    """The lines of a logwrap log file as the shipper reads them (an unterminated last line counts)."""
    text = path.read_bytes().decode("utf-8", errors="replace")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def stored_lines(client: ContainerClient, job_id: str, phase: str, pod: str, container: str) -> list[str]:
    """One stream's lines across a phase's chunk artifacts, in chunk order (markers included)."""
    prefix = f"{job_id}/execution-steps/logs/{phase}/"
    chunks: list[tuple[int, dict[str, Any]]] = []
    for blob in client.list_blobs(name_starts_with=prefix):
        name = blob.name[len(prefix):]
        if "/" in name or not name.endswith(".json") or not name[:-5].isdigit():
            continue
        body = json.loads(client.download_blob(blob.name).readall())
        chunks.append((int(name[:-5]), body))
    chunks.sort(key=lambda c: c[0])
    return [ev["line"] for _, body in chunks for ev in body["events"]
            if ev["pod"] == pod and ev["container"] == container]


def compare_lines(written: list[str], stored: list[str]) -> tuple[int, int]:
    """(lines missing from storage, lines stored more often than written)."""
    want, got = Counter(written), Counter(stored)
    missing = sum((want - got).values())
    extra = sum((got - want).values())
    return missing, extra


def first_finalize(s: Settings, base: str, deadline: float) -> FinalizeResult:
    """Finalize once the job's first batch is stored: a 404 (nothing stored yet) means the sidecar
    has not delivered anything so far, as when the whole stack starts at once; ask again."""
    while True:
        result = finalize_sync(base, s.admin_token, s.job_id, wait_seconds=FINALIZE_WAIT_SECONDS)
        if result.status != 404 or time.monotonic() >= deadline:
            return result
        time.sleep(1.0)


def run(s: Settings) -> Report:
    report = Report()
    deadline = time.monotonic() + s.timeout

    exit_path = s.logs_dir / f"{s.container}.exit"
    code = wait_for_exit_file(exit_path, deadline)
    report.expect(code == s.expect_exit, f"{s.container} ended with exit code {s.expect_exit} (logwrap: {code})")

    for base in s.aggregators:
        health, ready = wait_healthy(base, deadline)
        report.expect(health == ready == 200, f"{base} healthy: /healthz {health}, /readyz {ready}")

    # Finalize on the last replica, then on the first: replicas are stateless, the summary is the same.
    results = [first_finalize(s, s.aggregators[-1], deadline)]
    results += [finalize_sync(base, s.admin_token, s.job_id, wait_seconds=FINALIZE_WAIT_SECONDS)
                for base in reversed(s.aggregators[:-1])]
    for base, result in zip(reversed(s.aggregators), results, strict=True):
        report.expect(result.ok, f"finalize on {base}: {result.status} {result.error or ''}".rstrip())
    summary = results[0].body if results[0].ok else None
    if summary is None:
        return report
    print(json.dumps(summary, indent=2, sort_keys=True))
    for phase, step in sorted(summary.get("steps", {}).items()):
        print(f"\n== {phase}: last_output, as the job page shows it\n{step.get('last_output', '')}\n")
    report.expect(all(r.body == summary for r in results), "every replica's finalize returns the same summary")

    report.expect(summary.get("complete") is True and not summary.get("incomplete_streams"),
                  f"job complete (incomplete streams: {summary.get('incomplete_streams')})")
    running = summary.get("steps", {}).get("running", {})
    last_output = running.get("last_output", "")
    report.expect(s.expect_error in last_output, f"running last_output holds BLAST's error line {s.expect_error!r}")
    report.expect(f"[exit code {s.expect_exit}]" in last_output,
                  f"running last_output holds '[exit code {s.expect_exit}]'")
    containers = {(c["pod"], c["container"]): c for c in running.get("containers", [])}
    entry = containers.get((s.pod, s.container), {})
    report.expect(entry.get("exit_code") == s.expect_exit,
                  f"summary names {s.pod}/{s.container} with exit code {s.expect_exit} ({entry.get('exit_code')})")

    written = log_lines(s.logs_dir / f"{s.container}.log")
    client = ContainerClient.from_connection_string(s.connection_string, s.azure_container)
    with client:
        stored = stored_lines(client, s.job_id, "running", s.pod, s.container)
        has_summary = client.get_blob_client(f"{s.job_id}/execution-steps/summary.json").exists()
    missing, extra = compare_lines(written, stored)
    report.expect(len(written) > 0, f"{s.container} wrote lines ({len(written)})")
    report.expect(missing == 0 and extra == 0,
                  f"every line {s.container} wrote is stored exactly once "
                  f"({len(written)} written, {len(stored)} stored, {missing} missing, {extra} extra)")
    report.expect(stored == written, "stored lines keep the order they were written in")
    report.expect(entry.get("lines") == len(written), f"summary counts {len(written)} lines ({entry.get('lines')})")
    report.expect(has_summary, "summary.json is in storage")
    return report


def main() -> int:
    report = run(Settings.from_env(dict(os.environ)))
    if report.failures:
        print(f"check: {len(report.failures)} expectation(s) failed", file=sys.stderr)
        return 1
    print("check: every expectation holds", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
