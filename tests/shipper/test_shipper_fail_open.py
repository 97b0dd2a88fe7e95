"""The sidecar fails open (issue 17): whatever its configuration, `blast-log-shipper run` installs
logwrap, stays up, answers `/healthz` (200, saying what is wrong) and `/readyz`, says each problem
in one stderr line, and ends promptly on SIGTERM; a wrapped command still runs and exits with its
own code. `--require-shipping` is the other choice. Real processes throughout."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port
from shipper_helpers import JOB_ID, POD, ROOT, TOKEN, Recorder, append, eventually


@dataclass
class Sidecar:
    proc: subprocess.Popen[bytes]
    port: int
    volume: Path
    err_path: Path

    def get(self, path: str) -> tuple[int, dict[str, Any]]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def health(self) -> dict[str, Any]:
        status, body = self.get("/healthz")
        assert status == 200
        return body

    def answers(self) -> bool:
        try:
            self.get("/healthz")
        except OSError:
            return False
        return True

    def stderr(self) -> str:
        return self.err_path.read_text()

    def metric(self, name: str) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
        raise AssertionError(f"no metric {name}")

    def terminate(self, limit: float = 5.0) -> tuple[int, float]:
        """SIGTERM; the exit status and how long it took."""
        began = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=limit)
        return code, time.monotonic() - began


def base_env(volume: Path, port: int, url: str = "http://127.0.0.1:9") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLAST_LOGS_")}
    env.update({
        "PYTHONPATH": str(ROOT), "BLAST_LOGS_DIR": str(volume), "BLAST_LOGS_AGGREGATOR_URL": url,
        "BLAST_LOGS_TOKEN": TOKEN, "BLAST_LOGS_JOB_ID": JOB_ID, "BLAST_LOGS_POD": POD,
        "BLAST_LOGS_PHASE": "running", "BLAST_LOGS_METRICS_PORT": str(port),
        "BLAST_LOGS_POLL_INTERVAL": "0.05", "BLAST_LOGS_LINGER": "0.1", "BLAST_LOGS_BACKOFF_BASE": "0.05",
        "BLAST_LOGS_BACKOFF_MAX": "0.5", "BLAST_LOGS_CONFIG_RETRY": "0.2", "BLAST_LOGS_SANITISE_WORKERS": "0",
    })
    return env


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Any]:
    """start(env changes, *args) -> a running Sidecar whose /healthz answers; killed at teardown."""
    procs: list[subprocess.Popen[bytes]] = []

    def _start(changes: dict[str, str | None], *args: str, url: str = "http://127.0.0.1:9",
               wait: bool = True) -> Sidecar:
        volume = tmp_path / f"vol{len(procs)}"
        port = free_port()
        env = base_env(volume, port, url)
        for key, value in changes.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        err_path = tmp_path / f"stderr{len(procs)}"
        with open(tmp_path / f"stdout{len(procs)}", "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen([sys.executable, "-m", "shipper", "run", *args], env=env,
                                    stdout=out, stderr=err)
        procs.append(proc)
        car = Sidecar(proc, port, volume, err_path)
        if wait:
            deadline = time.monotonic() + 30
            while not car.answers():
                assert proc.poll() is None, f"the shipper exited {proc.returncode}: {car.stderr()}"
                assert time.monotonic() < deadline, "no /healthz"
                time.sleep(0.05)
        return car

    yield _start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def run_wrapped(volume: Path, code: int) -> subprocess.CompletedProcess[bytes]:
    """A job container: a command under the installed logwrap."""
    return subprocess.run([str(volume / "bin" / "logwrap"), "blast", "--", "sh", "-c",
                           f"echo working; exit {code}"],
                          env={**os.environ, "BLAST_LOGS_DIR": str(volume)}, capture_output=True, timeout=30)


# Each cause of issue 17, with a word its one-line message must hold.
CAUSES: list[tuple[str, dict[str, str | None], list[str], str]] = [
    ("missing-token", {"BLAST_LOGS_TOKEN": None}, [], "no job token"),
    ("missing-token-file", {"BLAST_LOGS_TOKEN": None, "BLAST_LOGS_TOKEN_FILE": "/nonexistent/token"}, [],
     "cannot read the token file /nonexistent/token"),
    ("missing-job-id-label", {"BLAST_LOGS_JOB_ID": ""}, [], "missing required setting BLAST_LOGS_JOB_ID"),
    ("url-without-scheme", {"BLAST_LOGS_AGGREGATOR_URL": "127.0.0.1:8080"}, [],
     "'127.0.0.1:8080' is not an http:// or https:// URL (did you mean http://127.0.0.1:8080?)"),
    ("ftp-url", {"BLAST_LOGS_AGGREGATOR_URL": "ftp://x"}, [], "'ftp://x' is not an http:// or https:// URL"),
    ("job-id-path", {}, ["--job-id", "../etc"], "'../etc' is not a job id"),
    ("bad-number", {"BLAST_LOGS_GRACE": "soon"}, [], "BLAST_LOGS_GRACE / --grace: not a number: 'soon'"),
    ("bad-flag-number", {}, ["--read-size", "lots"], "--read-size: not a number: 'lots'"),
    ("negative", {"BLAST_LOGS_BATCH_MAX_EVENTS": "-3"}, [], "--batch-max-events must not be negative"),
    ("unknown-phase", {"BLAST_LOGS_PHASE": "Not A Phase"}, [], "'Not A Phase' is not a phase name"),
    ("unknown-flag", {}, ["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
]


@pytest.mark.parametrize(("changes", "args", "said"), [c[1:] for c in CAUSES], ids=[c[0] for c in CAUSES])
async def test_a_misconfigured_sidecar_stays_up_and_says_what_is_wrong(
        start: Any, changes: dict[str, str | None], args: list[str], said: str) -> None:
    car = await asyncio.to_thread(start, changes, *args)
    body = car.health()
    assert body["status"] == "not_shipping" and body["shipping"] is False and body["ready"] is True
    assert any(said in p for p in body["problems"]), body
    assert car.get("/readyz")[0] == 200  # the startup probe passes whatever the configuration
    assert car.metric("blast_logs_shipper_config_errors") == len(body["problems"]) >= 1
    assert car.metric("blast_logs_shipper_healthy") == 0
    # One stderr line per problem (and per warning: a token for another job), each naming it.
    lines = car.stderr().splitlines()
    assert len(lines) == len(body["problems"]) + len(body["warnings"]), lines
    assert any(said in line for line in lines), lines
    # The job's container runs under logwrap and exits with its own code.
    done = await asyncio.to_thread(run_wrapped, car.volume, 7)
    assert done.returncode == 7 and done.stdout == b"working\n"
    assert (car.volume / "logs" / "blast.log").read_bytes() == b"working\n"
    await asyncio.sleep(0.5)  # a few config re-reads later it is still up, and says nothing new
    assert car.proc.poll() is None and len(car.stderr().splitlines()) == len(lines)
    code, seconds = car.terminate()
    assert code == 2 and seconds < 2.0


async def test_require_shipping_exits_at_once_without_logwrap(start: Any) -> None:
    car = start({"BLAST_LOGS_TOKEN": None, "BLAST_LOGS_REQUIRE_SHIPPING": "1"}, wait=False)
    assert await asyncio.to_thread(car.proc.wait, 30) == 2
    assert "no job token" in car.stderr()
    assert not (car.volume / "bin" / "logwrap").exists()


async def test_a_token_file_that_appears_later_is_picked_up(start: Any, recorder: Recorder, tmp_path: Path) -> None:
    token_file = tmp_path / "secret" / "token"
    car = await asyncio.to_thread(start, {"BLAST_LOGS_TOKEN": None, "BLAST_LOGS_TOKEN_FILE": str(token_file)},
                                  url=recorder.url)
    assert car.health()["status"] == "not_shipping"
    append(car.volume / "logs" / "blast.log", b"before the Secret\n")
    token_file.parent.mkdir()
    token_file.write_text(TOKEN + "\n")  # the optional Secret was created; the kubelet fills the volume
    await eventually(lambda: recorder.lines("blast") == ["before the Secret"], what="shipped once the token came")
    body = car.health()
    assert body["status"] == "ok" and body["shipping"] is True and body["problems"] == []
    assert car.metric("blast_logs_shipper_config_errors") == 0 and car.metric("blast_logs_shipper_healthy") == 1
    code, seconds = await asyncio.to_thread(car.terminate)
    assert code == 0 and seconds < 5 and recorder.eof("blast")


async def test_an_unreachable_aggregator_is_reported_and_retried_until_it_comes_back(
        start: Any, recorder: Recorder) -> None:
    recorder.default = 503
    car = await asyncio.to_thread(start, {}, url=recorder.url)
    append(car.volume / "logs" / "blast.log", b"kept while the aggregator is down\n")
    await eventually(lambda: car.health()["status"] == "degraded", what="degraded")
    body = car.health()
    assert body["shipping"] is True and any("answers 503" in p for p in body["problems"]), body
    assert car.metric("blast_logs_shipper_healthy") == 0
    recorder.default = 200
    await eventually(lambda: recorder.lines("blast") == ["kept while the aggregator is down"], what="delivery")
    await eventually(lambda: car.health()["status"] == "ok", what="ok again")
    code, _ = await asyncio.to_thread(car.terminate)
    assert code == 0


async def test_a_refused_token_is_reported(start: Any, recorder: Recorder) -> None:
    recorder.default = 401
    car = await asyncio.to_thread(start, {"BLAST_LOGS_REJECT_BACKOFF": "0.2"}, url=recorder.url)
    append(car.volume / "logs" / "blast.log", b"line\n")
    await eventually(lambda: any("answers 401" in p for p in car.health()["problems"]), what="401 named")
    assert car.proc.poll() is None


async def test_a_taken_metrics_port_is_said_and_the_shipper_ships_anyway(
        start: Any, recorder: Recorder) -> None:
    first = await asyncio.to_thread(start, {}, url=recorder.url)
    second = start({"BLAST_LOGS_METRICS_PORT": str(first.port)}, url=recorder.url, wait=False)
    await eventually(lambda: "cannot serve /metrics and /healthz" in second.stderr(), what="port problem said")
    append(second.volume / "logs" / "blast.log", b"shipped regardless\n")
    await eventually(lambda: "shipped regardless" in recorder.lines("blast"), what="shipped")
    assert second.proc.poll() is None
