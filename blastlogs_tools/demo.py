"""`blast-log-shipper demo`: the whole data path on this machine, in under a minute.

It starts the real aggregator on the embedded local store, wraps a real command in `logwrap`
(BLAST+ `blastn` on a database it makes, when installed; otherwise a bundled writer), runs the
shipper sidecar over the shared folder, stops it with SIGTERM as Kubernetes would, calls
finalize and prints the phase summaries and where the artifacts are.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

DEMO_JOB_ID = "elb-demo-1"
DEMO_POD = "blastn-batch-demo-job-0-abc12"
DEMO_SECRET = "demo-secret-not-for-production"
DEMO_ADMIN_TOKEN = "demo-admin-token"

def _sequence(seed: int, n: int) -> str:
    """A deterministic pseudo-random DNA sequence (low-complexity repeats would be masked)."""
    x, out = seed, []
    for _ in range(n):
        x = (1103515245 * x + 12345) % 2**31
        out.append("ACGT"[(x >> 16) % 4])
    return "".join(out)


_SUBJECT = _sequence(7, 600)
QUERY = f">query1 demo query\n{_SUBJECT[100:400]}\n"
SUBJECTS = (
    f">subj1 contains the query\n{_SUBJECT}\n"
    f">subj2 unrelated\n{_sequence(11, 600)}\n"
)

FALLBACK_WRITER = r"""
i=0
while [ $i -lt 50 ]; do echo "demo line $i: processing query batch"; i=$((i+1)); done
echo "Warning: [demo] this is a bundled writer; install ncbi-blast+ for real BLAST output" >&2
echo "Error: demo writer finished with a simulated failure" >&2
exit 2
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"demo: the {what} exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    raise SystemExit(f"demo: the {what} did not become healthy")


def _blast_commands(work: Path) -> list[tuple[str, list[str]]]:
    """(container, argv) pairs: real BLAST+ when installed, else the bundled writer."""
    if shutil.which("makeblastdb") and shutil.which("blastn"):
        (work / "subjects.fa").write_text(SUBJECTS)
        (work / "query.fa").write_text(QUERY)
        db = str(work / "demo-db")
        return [
            ("get-blastdb", ["makeblastdb", "-in", str(work / "subjects.fa"), "-dbtype", "nucl",
                             "-out", db, "-title", "demo"]),
            ("blast", ["blastn", "-query", str(work / "query.fa"), "-db", db, "-outfmt", "7"]),
            # The container restarts with a bad option: BLAST prints its real error and exits 1.
            ("blast", ["blastn", "-query", str(work / "query.fa"), "-db", db, "-evalue", "oops"]),
        ]
    return [("blast", ["sh", "-c", FALLBACK_WRITER])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="blast-log-shipper demo", description=__doc__)
    parser.add_argument("--dir", default="blast-logs-demo",
                        help="where the demo keeps its store and pod volume (default ./blast-logs-demo)")
    args = parser.parse_args(argv)

    base = Path(args.dir).resolve()
    if base.exists():
        shutil.rmtree(base)
    store = base / "store"
    volume = base / "pod-volume"
    work = Path(tempfile.mkdtemp(prefix="blast-logs-demo-"))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ)
    env.update({
        "BLAST_LOGS_STORE": f"file://{store}",
        "BLAST_LOGS_SECRET": DEMO_SECRET,
        "BLAST_LOGS_ADMIN_TOKEN": DEMO_ADMIN_TOKEN,
    })
    base.mkdir(parents=True)
    agg_log = open(base / "aggregator.log", "wb")
    agg = subprocess.Popen([sys.executable, "-m", "aggregator.cli", "serve", "--host", "127.0.0.1",
                            "--port", str(port)], env=env, stdout=agg_log, stderr=subprocess.STDOUT)
    shipper: subprocess.Popen[bytes] | None = None
    try:
        _wait_healthy(url, agg, "aggregator")
        print(f"demo: aggregator up at {url}, storing into {store}")

        from aggregator.auth import job_token
        from aggregator.client import finalize_sync

        metrics_port = _free_port()
        ship_env = dict(os.environ)
        ship_env.update({
            "BLAST_LOGS_DIR": str(volume),
            "BLAST_LOGS_AGGREGATOR_URL": url,
            "BLAST_LOGS_TOKEN": job_token(DEMO_SECRET, DEMO_JOB_ID),
            "BLAST_LOGS_JOB_ID": DEMO_JOB_ID,
            "BLAST_LOGS_POD": DEMO_POD,
            "BLAST_LOGS_NAMESPACE": "default",
            "BLAST_LOGS_PHASE": "running",
            "BLAST_LOGS_METRICS_PORT": str(metrics_port),
        })
        ship_log = open(base / "shipper.log", "wb")
        shipper = subprocess.Popen([sys.executable, "-m", "shipper", "run"], env=ship_env,
                                   stdout=ship_log, stderr=subprocess.STDOUT)
        # As the sidecar's startup probe does: wrapped containers start once it is up and has
        # installed bin/logwrap into the shared volume.
        _wait_healthy(f"http://127.0.0.1:{metrics_port}", shipper, "shipper")
        logwrap = volume / "bin" / "logwrap"
        wrap_env = dict(os.environ, BLAST_LOGS_DIR=str(volume))
        for container, cmd in _blast_commands(work):
            print(f"demo: running {container}: {' '.join(cmd)}")
            done = subprocess.run(["sh", str(logwrap), container, "--", *cmd], env=wrap_env,
                                  stdout=subprocess.DEVNULL, cwd=work, check=False)
            print(f"demo:   exit code {done.returncode}")
        print("demo: pod finished; sending SIGTERM to the shipper (it drains and sends eof)")
        shipper.send_signal(signal.SIGTERM)
        rc = shipper.wait(timeout=60)
        print(f"demo: shipper exited with status {rc}")
        result = finalize_sync(url, DEMO_ADMIN_TOKEN, DEMO_JOB_ID, wait_seconds=10)
        if not result.ok:
            print(f"demo: finalize failed: {result.error}", file=sys.stderr)
            return 1
        body = result.body or {}
        print(f"demo: finalize complete={body.get('complete')}")
        for phase, step in sorted(body.get("steps", {}).items()):
            print(f"\n=== phase {phase}: {step['lines']} lines, {step['chunks']} chunks, "
                  f"truncated={step['truncated']} ===")
            print(step["last_output"])
        steps_dir = store / DEMO_JOB_ID / "execution-steps"
        print(f"\ndemo: artifacts are in {steps_dir}/logs/<phase>/<n>.json, "
              f"the summary in {steps_dir}/summary.json")
        _print_reading(url, store)
        return 0 if rc == 0 and body.get("complete") else 1
    finally:
        if shipper is not None and shipper.poll() is None:
            shipper.kill()
        agg.send_signal(signal.SIGTERM)
        try:
            agg.wait(timeout=15)
        except subprocess.TimeoutExpired:
            agg.kill()
        agg_log.close()
        shutil.rmtree(work, ignore_errors=True)


def _print_reading(url: str, store: Path) -> None:
    """How to read the job back: the last lines through the `logs` command (while this aggregator is up),
    then the viewer URL and the follow command for an aggregator started on the demo's store."""
    from aggregator.auth import read_token

    token = read_token(DEMO_SECRET, DEMO_JOB_ID)
    env = dict(os.environ, BLAST_LOGS_TOKEN=token)
    tail = subprocess.run([sys.executable, "-m", "aggregator.cli", "logs", DEMO_JOB_ID, "--url", url, "--prefix",
                           "--phase", "running", "--tail", "3"], env=env, capture_output=True, text=True, timeout=60, check=False)
    print(f"\ndemo: its last lines, read back (blast-log-aggregator logs {DEMO_JOB_ID} --phase running --tail 3 --prefix):")
    print(tail.stdout.rstrip() or tail.stderr.rstrip())
    port = 8080
    print("\ndemo: to read it again, serve the demo's store and open the viewer or follow it:")
    print(f"  BLAST_LOGS_STORE=file://{store} BLAST_LOGS_SECRET={DEMO_SECRET} "
          f"BLAST_LOGS_ADMIN_TOKEN={DEMO_ADMIN_TOKEN} blast-log-aggregator serve --port {port} &")
    print(f"  viewer: http://127.0.0.1:{port}/v1/jobs/{DEMO_JOB_ID}/view#token={token}")
    print(f"  follow: BLAST_LOGS_TOKEN={token} blast-log-aggregator logs {DEMO_JOB_ID} "
          f"--url http://127.0.0.1:{port} -f")


if __name__ == "__main__":
    raise SystemExit(main())
