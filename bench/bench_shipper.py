"""The shipper against syslog-ng and Fluent Bit, side by side on the same file (not a test: run it by hand).

    .venv/bin/python bench/bench_shipper.py throughput [--lines 1000000] [--runs 3]
    .venv/bin/python bench/bench_shipper.py limits     [--lines 1000000]
    .venv/bin/python bench/bench_shipper.py live       [--rate 10000] [--seconds 30]
    .venv/bin/python bench/bench_shipper.py drain      [--size 100M]
    .venv/bin/python bench/bench_shipper.py memory     [--sizes 100M,2G] [--default-sizes 10M,1G]

- throughput: `blast-log-shipper run` and syslog-ng (file source -> http() with JSON batches,
  bench/syslog-ng.conf.tmpl) ship the same generated file to bench/sink.py, in alternation, `--runs`
  times each. Time runs from the process start to the sink's receipt of the last line; CPU seconds
  are the child's user+sys (os.wait4, which includes its reaped children: the shipper's sanitising
  workers), peak RSS the sum of VmHWM over the child and its descendants (polled from /proc every
  50 ms; counts pages shared between them once per process), and peak PSS the largest sum of their
  proportional set sizes seen (each shared page split among its processes: what the tree occupies).
  ru_maxrss is kept in the JSON but can include this script's own RSS (vfork+exec).
  The shipper runs with its defaults (sanitising and redaction on, no gzip) except an unlimited
  per-stream budget, so that both ship every line.
  Fluent Bit (tail -> http with `Format json`, bench/fluent-bit.conf.tmpl) runs in the same
  alternation when a binary is found (`--fluent-bit PATH`, else $FLUENT_BIT, else `fluent-bit` on
  PATH); `--fluent-bit-variant NAME:KEY=VALUE,...` adds it with other template values (e.g.
  `membuf:MEM_BUF_LIMIT=5M`, or `debug:BINARY=PATH` for another build), `--variant
  NAME:KEY=VALUE,...` the shipper with other settings.
- limits: `cat FILE > /dev/null` and one `curl --data-binary @FILE` into the sink.
- live: a writer appends `LIVE <unix ts> ...` lines at `--rate` lines/s for `--seconds`; the sink
  takes the lag of each line from its ts to the acknowledgement; CPU share is the child's CPU time
  over the writing window (plus the catch-up to the last acknowledgement).
- drain: the shipper starts on a `--size` file and gets SIGTERM as soon as it announced the stream
  (its first, empty batch): the time from SIGTERM to exit, everything delivered, exit status 0.
- memory: peak RSS shipping `--sizes` files whole (unlimited budget), and `--default-sizes` with
  the default budget (64 MiB, then a tail ring), one run each; the sink also counts the lines of
  `dropped` reports, and a shipper run whose events and reported lines do not add up to the file's
  lines is flagged (WARNING). Large files are deleted afterwards unless `--keep`. Fluent Bit (and its variants) ship the `--sizes` files too.
`--only shipper,fluent-bit` restricts any mode to those contenders (and their variants).

Generated files live in `--workdir` (default /tmp/blast-bench) and are reused; results are written
as JSON to bench/results/ (gitignored). syslog-ng comes from Debian: `apt-get install -y
syslog-ng-core syslog-ng-mod-http`; without it the syslog-ng side is skipped with a notice.
Fluent Bit has no Debian package here: build it from source (docs/benchmarks.md, "Shipper against
Fluent Bit (issue 19)", says how) and pass the binary; without one its side is skipped likewise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Final

BENCH: Final = Path(__file__).resolve().parent
ROOT: Final = BENCH.parent
sys.path.insert(0, str(BENCH))

from gen_logs import _size, write_log  # noqa: E402
from machine_info import machine as machine_info  # noqa: E402

from shipper.config import default  # noqa: E402

DEFAULT_STREAM_BUDGET_BYTES: Final = default("stream_budget_bytes")

PYTHON: Final = ROOT / ".venv" / "bin" / "python"
SHIPPER: Final = ROOT / ".venv" / "bin" / "blast-log-shipper"
SYSLOG_NG: Final = "syslog-ng"
CONF_TMPL: Final = BENCH / "syslog-ng.conf.tmpl"
RESULTS: Final = BENCH / "results"
DEFAULT_WORKDIR: Final = Path("/tmp/blast-bench")
UNLIMITED_BUDGET: Final = str(1 << 50)
CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
MiB: Final = 1024 * 1024

#: syslog-ng tuning (see bench/syslog-ng.conf.tmpl). Throughput: large windows, 1,000-line/1 MiB
#: batches like the shipper's, two HTTP workers for two cores. Live: poll like the shipper does.
SYSLOG_NG_TUNING: Final = {
    "FIFO": "100000", "FOLLOW_FREQ": "1", "FETCH": "1000", "IW": "100000",
    "BATCH_LINES": "1000", "BATCH_BYTES": str(MiB - 4096), "BATCH_TIMEOUT_MS": "300", "WORKERS": "2",
}
SYSLOG_NG_LIVE: Final = {"FOLLOW_FREQ": "0.25"}

FLUENT_BIT_CONF_TMPL: Final = BENCH / "fluent-bit.conf.tmpl"
#: Fluent Bit tuning (see bench/fluent-bit.conf.tmpl), the best of those tried on 2 cores
#: (docs/benchmarks.md): flush every FLUSH seconds, WORKERS http output threads, tail reads of CHUNK,
#: no memory limit for the tail input (0), the input in the main thread (THREADED off), and no
#: posix_fadvise(DONTNEED) after reading (CACHE_ADVISE off: the input stays cached for the others).
FLUENT_BIT_TUNING: Final = {
    "FLUSH": "0.1", "WORKERS": "2", "CHUNK": "256k", "MEM_BUF_LIMIT": "0", "THREADED": "off",
    "CACHE_ADVISE": "off",
}
FLUENT_BIT_LIVE: Final[dict[str, str]] = {}
#: the Fluent Bit binary (`--fluent-bit`, $FLUENT_BIT or `fluent-bit` on PATH); None: skipped
FLUENT_BIT_PATH: str | None = None


# ---- helpers -------------------------------------------------------------------------------------


def http_json(url: str, method: str = "GET") -> dict[str, Any]:
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=10) as resp:
        result: dict[str, Any] = json.loads(resp.read())
        return result


class Sink:
    """bench/sink.py in its own process, so its CPU and memory are not the measured child's."""

    def __init__(self, delay: float = 0.0) -> None:
        self.proc = subprocess.Popen([str(PYTHON), str(BENCH / "sink.py"), "--delay", str(delay)],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.startswith("listening "):
            self.proc.kill()
            raise RuntimeError(f"sink did not start: {line!r}")
        self.url = line.split()[1]

    def stats(self) -> dict[str, Any]:
        return http_json(self.url + "/stats")

    def reset(self) -> None:
        http_json(self.url + "/reset", "POST")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def _one_status(pid: int) -> tuple[int, float]:
    hwm = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    hwm = int(line.split()[1]) * 1024
                    break
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return hwm, 0.0
    return hwm, cpu


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (the shipper's sanitising workers), from /proc."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except (OSError, ValueError):
            continue
    return found


def pss(pid: int) -> int:
    """Proportional set size in bytes: private pages plus a share of pages mapped by several
    processes (the interpreter and libraries a worker shares with the shipper), so a tree's PSS
    adds up to what it really occupies; 0 once the process is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def proc_status(pid: int) -> tuple[int, float]:
    """(VmHWM in bytes, user+sys CPU seconds) of a running process and its descendants, summed
    (a sum of peaks: an upper bound of the tree's peak); (0, 0.0) once it is gone."""
    hwm, cpu = 0, 0.0
    for p in descendants(pid):
        h, c = _one_status(p)
        hwm += h
        cpu += c
    return hwm, cpu


@dataclass
class Child:
    """A measured child process: VmHWM polled while it runs, rusage when reaped."""

    argv: Sequence[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] = field(init=False)
    started: float = 0.0
    hwm: int = 0
    #: the process tree's largest PSS sum seen while polling
    pss: int = 0
    status: int | None = None
    rusage: Any = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Child:
        with open(self.log, "wb") as out:
            self.started = time.time()
            self.proc = subprocess.Popen(list(self.argv), env=self.env, stdout=out, stderr=subprocess.STDOUT)
        threading.Thread(target=self._poll, daemon=True).start()
        return self

    def _poll(self) -> None:
        peaks: dict[int, int] = {}  # per process: a worker's peak counts after it exited too
        while not self._stop.is_set():
            tree = descendants(self.proc.pid)
            for p in tree:
                peaks[p] = max(peaks.get(p, 0), _one_status(p)[0])
            self.hwm = max(self.hwm, sum(peaks.values()))
            self.pss = max(self.pss, sum(map(pss, tree)))
            self._stop.wait(0.05)

    def cpu_now(self) -> float:
        return proc_status(self.proc.pid)[1]

    def alive(self) -> bool:
        if self.status is not None:
            return False
        pid, status, ru = os.wait4(self.proc.pid, os.WNOHANG)
        if pid == 0:
            return True
        self._reaped(status, ru)
        return False

    def _reaped(self, status: int, ru: Any) -> None:
        self._stop.set()
        self.status = os.waitstatus_to_exitcode(status)
        self.rusage = ru
        self.proc.returncode = self.status

    def signal(self, sig: int) -> None:
        if self.status is None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float = 120.0) -> int:
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() > deadline:
                self.proc.kill()
                _, status, ru = os.wait4(self.proc.pid, 0)
                self._reaped(status, ru)
                raise RuntimeError(f"{self.argv[0]} did not exit within {timeout}s (killed)")
            time.sleep(0.01)
        assert self.status is not None
        return self.status

    @property
    def cpu(self) -> float:
        return float(self.rusage.ru_utime + self.rusage.ru_stime)

    @property
    def maxrss(self) -> int:
        return int(self.rusage.ru_maxrss) * 1024


def wait_for(check: Callable[[], bool], timeout: float, what: str, child: Child | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if child is not None and not child.alive():
            raise RuntimeError(f"{what}: the process exited early with {child.status} (see {child.log})")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def count_lines(path: Path) -> int:
    n = 0
    with open(path, "rb") as f:
        while piece := f.read(MiB):
            n += piece.count(b"\n")
    return n


@dataclass
class Input:
    path: Path
    lines: int
    bytes: int


def ensure_input(workdir: Path, *, lines: int = 1_000_000, size: int | None = None) -> Input:
    """Generate (or reuse) a log under workdir; its line count is stored next to it."""
    name = f"log-{lines}" + (f"-{size}" if size else "") + ".log"
    path = workdir / name
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists():
        info = json.loads(meta.read_text())
        st = path.stat()
        # a file the shipper reclaimed (holes punched, e.g. by an older version of this script
        # that hard-linked it into the volume) has its size but not its blocks: generate anew
        if info["bytes"] == st.st_size and st.st_blocks * 512 >= st.st_size * 0.95:
            return Input(path, info["lines"], info["bytes"])
    print(f"generating {path} ...", file=sys.stderr, flush=True)
    n, nbytes = write_log(path, lines=lines if size is None else min(lines, 1_000_000), size=size)
    meta.write_text(json.dumps({"lines": n, "bytes": nbytes}))
    return Input(path, n, nbytes)


def copy_synced(src: Path, dst: Path) -> None:
    """Copy and flush it to disk, so that no writeback of the copy overlaps the measured run."""
    shutil.copyfile(src, dst)
    fd = os.open(dst, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(8 * MiB):
            pass


def machine() -> dict[str, Any]:
    sng = fb = "absent"
    if shutil.which(SYSLOG_NG):
        out = subprocess.run([SYSLOG_NG, "--version"], capture_output=True, text=True).stdout
        sng = out.splitlines()[0] if out else "?"
    if FLUENT_BIT_PATH is not None:
        out = subprocess.run([FLUENT_BIT_PATH, "--version"], capture_output=True, text=True).stdout
        fb = out.splitlines()[0] if out else "?"
    return {**machine_info(), "syslog_ng": sng, "fluent_bit": fb, "fluent_bit_path": FLUENT_BIT_PATH}


def have_syslog_ng() -> bool:
    if shutil.which(SYSLOG_NG) is None:
        print("syslog-ng is not installed; its side is skipped. Install it with:\n"
              "  apt-get install -y syslog-ng-core syslog-ng-mod-http", file=sys.stderr)
        return False
    return True


def find_fluent_bit(given: str | None) -> str | None:
    """`--fluent-bit PATH`, else $FLUENT_BIT, else `fluent-bit` on PATH; None (with a notice) if none."""
    path = given or os.environ.get("FLUENT_BIT") or shutil.which("fluent-bit")
    if path and os.access(path, os.X_OK):
        return path
    print(f"no Fluent Bit binary ({path or 'none given, none on PATH'}); its side is skipped. Build it "
          "(docs/benchmarks.md, issue 19) and pass --fluent-bit PATH or set FLUENT_BIT", file=sys.stderr)
    return None


def contenders(args: argparse.Namespace, *, syslog_ng: bool = True) -> list[str]:
    """The base contenders of a mode, as `--only`, `--no-syslog-ng` and the binaries found allow."""
    only = set(args.only.split(",")) if args.only else None
    out = ["shipper"]
    if syslog_ng and not args.no_syslog_ng and (only is None or "syslog-ng" in only) and have_syslog_ng():
        out.append("syslog-ng")
    if FLUENT_BIT_PATH is not None:
        out.append("fluent-bit")
    return [w for w in out if only is None or w in only]


def parse_variants(specs: list[str] | None, kind: str) -> dict[str, dict[str, str]]:
    """`NAME:KEY=VALUE,KEY=VALUE` -> {"KIND NAME": {KEY: VALUE}}."""
    out: dict[str, dict[str, str]] = {}
    for spec in specs or []:
        name, _, settings = spec.partition(":")
        out[f"{kind} {name}"] = dict(kv.split("=", 1) for kv in settings.split(",") if kv)
    return out


def save(kind: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(data, indent=2, default=str))
    return path


# ---- the contenders ------------------------------------------------------------------------------


#: `--set KEY=VALUE`: shipper settings for every run of any mode (e.g. BLAST_LOGS_SANITISE_WORKERS=0).
SHIPPER_SETTINGS: dict[str, str] = {}


def shipper_env(volume: Path, sink: Sink, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLAST_LOGS_")}
    env.update({
        "BLAST_LOGS_DIR": str(volume), "BLAST_LOGS_AGGREGATOR_URL": sink.url,
        "BLAST_LOGS_TOKEN": "bench.not-checked", "BLAST_LOGS_JOB_ID": "bench",
        "BLAST_LOGS_POD": "bench-pod", "BLAST_LOGS_PHASE": "running", "BLAST_LOGS_METRICS_PORT": "0",
    })
    env.update(SHIPPER_SETTINGS)
    env.update(extra)
    return env


def start_shipper(run_dir: Path, src: Path | None, sink: Sink, **extra: str) -> Child:
    """A fresh volume whose logs/blast.log is a copy of `src` or empty; no checkpoints. A copy, not
    a hard link: the shipper reclaims what it delivered (punches holes), which would zero the
    generated input for every later run."""
    shutil.rmtree(run_dir, ignore_errors=True)
    logs = run_dir / "vol" / "logs"
    logs.mkdir(parents=True)
    if src is not None:
        copy_synced(src, logs / "blast.log")
    else:
        (logs / "blast.log").touch()
    return Child([str(SHIPPER), "run"], shipper_env(run_dir / "vol", sink, **extra),
                 run_dir / "shipper.log").start()


def start_syslog_ng(run_dir: Path, src: Path, sink: Sink, **tuning: str) -> Child:
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    values = dict(SYSLOG_NG_TUNING, **tuning, FILE=str(src), URL=sink.url + "/syslog")
    conf = CONF_TMPL.read_text()
    for key, value in values.items():
        conf = conf.replace(f"@@{key}@@", value)
    (run_dir / "syslog-ng.conf").write_text(conf)
    argv = [SYSLOG_NG, "-F", "--no-caps", "-f", str(run_dir / "syslog-ng.conf"),
            "-R", str(run_dir / "persist"), "-p", str(run_dir / "pid"), "-c", str(run_dir / "ctl")]
    return Child(argv, dict(os.environ), run_dir / "syslog-ng.log").start()


def start_fluent_bit(run_dir: Path, src: Path, sink: Sink, **tuning: str) -> Child:
    """Fluent Bit on bench/fluent-bit.conf.tmpl with FLUENT_BIT_TUNING, `tuning` over it (a variant's
    BINARY=PATH runs another build)."""
    binary = tuning.pop("BINARY", FLUENT_BIT_PATH)
    assert binary is not None
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    host, _, port = sink.url.removeprefix("http://").partition(":")
    values = dict(FLUENT_BIT_TUNING, **tuning, FILE=str(src), DB=str(run_dir / "tail.db"), HOST=host, PORT=port)
    conf = FLUENT_BIT_CONF_TMPL.read_text()
    for key, value in values.items():
        conf = conf.replace(f"@@{key}@@", value)
    (run_dir / "fluent-bit.conf").write_text(conf)
    return Child([binary, "-c", str(run_dir / "fluent-bit.conf")], dict(os.environ),
                 run_dir / "fluent-bit.log").start()


def start(kind: str, run_dir: Path, src: Path, sink: Sink, **extra: str) -> Child:
    """A contender shipping the whole of `src` (the shipper with its per-stream budget lifted)."""
    if kind == "shipper":
        return start_shipper(run_dir, src, sink, BLAST_LOGS_STREAM_BUDGET_BYTES=UNLIMITED_BUDGET, **extra)
    if kind == "fluent-bit":
        return start_fluent_bit(run_dir, src, sink, **extra)
    return start_syslog_ng(run_dir, src, sink, **extra)


@dataclass
class Run:
    who: str
    lines: int
    bytes: int
    seconds: float
    cpu: float
    hwm: int
    maxrss: int
    pss: int
    exit: int | None

    @property
    def lines_per_s(self) -> float:
        return self.lines / self.seconds

    @property
    def mb_per_s(self) -> float:
        return self.bytes / self.seconds / 1e6

    @property
    def lines_per_cpu_s(self) -> float:
        return self.lines / self.cpu


def ship_once(who: str, inp: Input, sink: Sink, run_dir: Path, timeout: float, **extra: str) -> Run:
    """Ship the whole file; timed to the sink's receipt of the last line; then SIGTERM and reap."""
    sink.reset()
    child = start(who, run_dir, inp.path, sink, **extra)
    try:
        wait_for(lambda: sink.stats()["events"] >= inp.lines, timeout, f"{who}: every line at the sink", child)
        stats = sink.stats()
        child.signal(signal.SIGTERM)
        status = child.wait(60)
    finally:
        if child.status is None:
            child.proc.kill()
            child.wait(10)
    if who == "shipper":
        final = sink.stats()
        if status != 0 or final["eof"] != 1:
            print(f"  warning: shipper exit {status}, eof batches {final['eof']}", file=sys.stderr)
    if stats["events"] != inp.lines or stats["bad"]:
        print(f"  warning: {who}: sink counted {stats['events']} events for {inp.lines} lines, "
              f"{stats['bad']} bad bodies", file=sys.stderr)
    return Run(who, inp.lines, inp.bytes, stats["last_event"] - child.started, child.cpu, child.hwm,
               child.maxrss, child.pss, status)


# ---- reporting -----------------------------------------------------------------------------------


def med_range(values: Sequence[float], fmt: str) -> str:
    return f"{format(statistics.median(values), fmt)} ({format(min(values), fmt)}–{format(max(values), fmt)})"


def kind_of(who: str) -> str:
    """"shipper w0" -> "shipper", "fluent-bit membuf" -> "fluent-bit"."""
    return who.split(" ", 1)[0]


def throughput_table(runs: dict[str, list[Run]]) -> str:
    """Medians (ranges) per contender, and the ratio of the shipper's median to each peer's."""
    rows: list[tuple[str, Callable[[Run], float], str]] = [
        ("lines/s", lambda r: r.lines_per_s, ",.0f"),
        ("MB/s", lambda r: r.mb_per_s, ".1f"),
        ("wall s", lambda r: r.seconds, ".2f"),
        ("CPU s (user+sys)", lambda r: r.cpu, ".2f"),
        ("lines per CPU-second", lambda r: r.lines_per_cpu_s, ",.0f"),
        ("peak RSS MiB (VmHWM, summed over its processes)", lambda r: r.hwm / MiB, ".1f"),
        ("peak PSS MiB (all its processes)", lambda r: r.pss / MiB, ".1f"),
    ]
    who = [w for w in runs if runs[w]]
    peers = [w for w in who if kind_of(w) != "shipper"] if runs.get("shipper") else []
    head = "| metric | " + " | ".join(f"{w}: median (range)" for w in who) + " | "
    head += "".join(f"shipper / {p} | " for p in peers)
    out = [head.rstrip(), "|" + "---|" * (len(who) + 1 + len(peers))]
    for name, get, fmt in rows:
        line = f"| {name} | " + " | ".join(med_range([get(r) for r in runs[w]], fmt) for w in who) + " |"
        for p in peers:
            ratio = statistics.median(get(r) for r in runs["shipper"]) / statistics.median(get(r) for r in runs[p])
            line += f" {ratio:.2f}× |"
        out.append(line)
    return "\n".join(out)


def round_ratios(runs: dict[str, list[Run]], get: Callable[[Run], float]) -> dict[str, list[float]]:
    """Round by round: the shipper's run against each peer's run of the same round."""
    base = runs.get("shipper", [])
    return {p: [round(get(a) / get(b), 2) for a, b in zip(base, rs, strict=False)]
            for p, rs in runs.items() if base and kind_of(p) != "shipper" and rs}


# ---- modes ---------------------------------------------------------------------------------------


def mode_throughput(args: argparse.Namespace) -> dict[str, Any]:
    inp = ensure_input(args.workdir, lines=args.lines)
    warm(inp.path)
    variants = all_variants(args)
    who_all = [w for w in contenders(args) for w in (w, *(v for v in variants if kind_of(v) == w))]
    sink = Sink()
    runs: dict[str, list[Run]] = {w: [] for w in who_all}
    try:
        for i in range(args.runs):
            for who in who_all if i % 2 == 0 else reversed(who_all):
                kind = kind_of(who)
                r = ship_once(kind, inp, sink, args.workdir / f"run-{kind}", args.timeout,
                              **variants.get(who, {}))
                r.who = who
                runs[who].append(r)
                print(f"  run {i + 1} {who:9s}: {r.lines_per_s:10,.0f} lines/s {r.mb_per_s:6.1f} MB/s "
                      f"{r.seconds:6.2f} s  CPU {r.cpu:6.2f} s  RSS {r.hwm / MiB:6.1f} MiB  PSS {r.pss / MiB:6.1f} MiB  "
                      f"exit {r.exit}",
                      flush=True)
    finally:
        sink.stop()
    table = throughput_table(runs)
    rounds = {"lines/s": round_ratios(runs, lambda r: r.lines_per_s),
              "lines per CPU-second": round_ratios(runs, lambda r: r.lines_per_cpu_s)}
    print(f"\n{inp.lines:,} lines, {inp.bytes / 1e6:.1f} MB ({inp.path}), {args.runs} runs each\n")
    print(table)
    for metric, per_peer in rounds.items():
        for peer, ratios in per_peer.items():
            print(f"round by round, shipper / {peer}, {metric}: {', '.join(map(str, ratios))}")
    return {"input": asdict(inp), "table": table, "round_ratios": rounds,
            "runs": {w: [asdict(r) for r in rs] for w, rs in runs.items()}}


def all_variants(args: argparse.Namespace) -> dict[str, dict[str, str]]:
    """Extra settings to compare in the same alternation: shipper and Fluent Bit variants."""
    return {**parse_variants(args.variant, "shipper"), **parse_variants(args.fluent_bit_variant, "fluent-bit")}


def timed(argv: Sequence[str], shell: bool = False) -> tuple[float, float, str]:
    """Wall seconds, child CPU seconds and stdout of one command."""
    t0 = time.time()
    proc = subprocess.Popen(argv if not shell else argv[0], shell=shell, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    out = proc.stdout.read().decode(errors="replace")
    _, _, ru = os.wait4(proc.pid, 0)
    proc.returncode = 0
    return time.time() - t0, ru.ru_utime + ru.ru_stime, out


def mode_limits(args: argparse.Namespace) -> dict[str, Any]:
    inp = ensure_input(args.workdir, lines=args.lines)
    warm(inp.path)
    sink = Sink()
    rows = []
    try:
        for _ in range(args.runs):
            wall, cpu, _ = timed([f"cat {inp.path} > /dev/null"], shell=True)
            rows.append(("cat FILE > /dev/null", wall, cpu))
            sink.reset()
            wall, cpu, out = timed(["curl", "-sS", "-H", "Expect:", "-H", "Content-Type: text/plain",
                                    "--data-binary", f"@{inp.path}", sink.url + "/raw"])
            got = json.loads(out)
            if got["lines"] != inp.lines:
                print(f"  warning: the sink counted {got['lines']} lines", file=sys.stderr)
            rows.append(("curl --data-binary @FILE (one POST to the sink)", wall, cpu))
    finally:
        sink.stop()
    table = ["| limit | lines/s | MB/s | wall s | CPU s |", "|---|---|---|---|---|"]
    for name in dict.fromkeys(r[0] for r in rows):
        walls = [r[1] for r in rows if r[0] == name]
        cpus = [r[2] for r in rows if r[0] == name]
        w = statistics.median(walls)
        table.append(f"| {name} | {inp.lines / w:,.0f} | {inp.bytes / w / 1e6:,.0f} | "
                     f"{med_range(walls, '.3f')} | {med_range(cpus, '.3f')} |")
    text = "\n".join(table)
    print(f"\n{inp.lines:,} lines, {inp.bytes / 1e6:.1f} MB, {args.runs} runs each\n")
    print(text)
    return {"input": asdict(inp), "table": text, "rows": rows}


def writer(path: Path, rate: int, seconds: float, filler: list[bytes]) -> int:
    """Append `LIVE <ts> <n> <filler>` lines at `rate` per second; returns how many were written."""
    n = 0
    total = int(rate * seconds)
    t0 = time.time()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        while n < total:
            now = time.time()
            due = min(int((now - t0) * rate), total)
            if due > n:
                ts = f"LIVE {now:.6f} ".encode()
                os.write(fd, b"".join(ts + b"%d " % i + filler[i % len(filler)] for i in range(n, due)))
                n = due
            time.sleep(0.005)
    finally:
        os.close(fd)
    return n


def live_once(who: str, args: argparse.Namespace, sink: Sink, filler: list[bytes]) -> dict[str, Any]:
    run_dir = args.workdir / f"live-{who}"
    sink.reset()
    if who == "shipper":
        child = start_shipper(run_dir, None, sink)
        wait_for(lambda: sink.stats()["requests"] >= 1, 30, "the shipper's first batch", child)
        log = run_dir / "vol" / "logs" / "blast.log"
    else:
        log = args.workdir / f"live-{who}.log"
        log.write_bytes(b"")
        if who == "fluent-bit":
            child = start_fluent_bit(run_dir, log, sink, **FLUENT_BIT_LIVE)
        else:
            child = start_syslog_ng(run_dir, log, sink, **SYSLOG_NG_LIVE)
        time.sleep(2.0)
    try:
        cpu0, t0 = child.cpu_now(), time.time()
        written = writer(log, args.rate, args.seconds, filler)
        wait_for(lambda: sink.stats()["events"] >= written, 30, f"{who}: the live lines", child)
        cpu1, t1 = child.cpu_now(), time.time()
        stats = sink.stats()
        child.signal(signal.SIGTERM)
        child.wait(60)
    finally:
        if child.status is None:
            child.proc.kill()
            child.wait(10)
    share = (cpu1 - cpu0) / (t1 - t0)
    row = {"who": who, "lines": written, "seconds": round(t1 - t0, 2), "cpu_s": round(cpu1 - cpu0, 2),
           "cpu_share_pct": round(100 * share, 1), "lag_p50": stats.get("lag_p50"),
           "lag_p99": stats.get("lag_p99"), "lag_max": stats.get("lag_max"), "lag_n": stats["lag_n"],
           "peak_rss_mib": round(child.hwm / MiB, 1), "peak_pss_mib": round(child.pss / MiB, 1)}
    print(f"  {who:9s}: {written} lines in {t1 - t0:.1f} s, CPU {100 * share:.1f} % of one core, lag "
          f"p50 {row['lag_p50']:.3f} s p99 {row['lag_p99']:.3f} s max {row['lag_max']:.3f} s", flush=True)
    return row


def mode_live(args: argparse.Namespace) -> dict[str, Any]:
    inp = ensure_input(args.workdir, lines=args.lines)
    with open(inp.path, "rb") as f:
        filler = [line + b"\n" for line in f.read(16 * MiB).split(b"\n")[:100_000] if len(line) < 4000]
    sink = Sink()
    try:
        rows = [live_once(who, args, sink, filler) for who in contenders(args)]
    finally:
        sink.stop()
    table = ["| shipper | lines | wall s | CPU s | CPU % of one core | lag p50 s | lag p99 s | lag max s "
             "| peak RSS MiB |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['who']} | {r['lines']:,} | {r['seconds']} | {r['cpu_s']} | {r['cpu_share_pct']} "
                     f"| {r['lag_p50']:.3f} | {r['lag_p99']:.3f} | {r['lag_max']:.3f} | {r['peak_rss_mib']} |")
    text = "\n".join(table)
    print(f"\nwriter: {args.rate:,} lines/s for {args.seconds} s\n")
    print(text)
    return {"rate": args.rate, "seconds": args.seconds, "table": text, "rows": rows}


def mode_drain(args: argparse.Namespace) -> dict[str, Any]:
    inp = ensure_input(args.workdir, size=args.size)
    warm(inp.path)
    sink = Sink()
    rows = []
    try:
        for label, extra in (("unlimited budget: every line shipped", {
                "BLAST_LOGS_STREAM_BUDGET_BYTES": UNLIMITED_BUDGET}), ("default budget (64 MiB + tail)", {})):
            for _ in range(args.runs):
                sink.reset()
                child = start_shipper(args.workdir / "drain", inp.path, sink, **extra)
                try:
                    wait_for(lambda: sink.stats()["requests"] >= 1, 30, "the first batch", child)
                    before = sink.stats()["events"]
                    t0 = time.monotonic()
                    child.signal(signal.SIGTERM)
                    status = child.wait(120)
                    took = time.monotonic() - t0
                finally:
                    if child.status is None:
                        child.proc.kill()
                        child.wait(10)
                after = sink.stats()
                rows.append({"case": label, "seconds": round(took, 2), "exit": status,
                             "unshipped_lines_at_sigterm": inp.lines - before, "events": after["events"],
                             "eof": after["eof"], "cpu_s": round(child.cpu, 2),
                             "peak_rss_mib": round(child.hwm / MiB, 1), "peak_pss_mib": round(child.pss / MiB, 1)})
                print(f"  {label}: {took:.2f} s, exit {status}, {after['events']:,} events "
                      f"({inp.lines - before:,} lines unshipped at SIGTERM), eof {after['eof']}", flush=True)
    finally:
        sink.stop()
    table = ["| case | SIGTERM → exit s | exit | lines unshipped at SIGTERM | events at sink | eof | "
             "CPU s | peak RSS MiB |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['case']} | {r['seconds']} | {r['exit']} | {r['unshipped_lines_at_sigterm']:,} "
                     f"| {r['events']:,} | {r['eof']} | {r['cpu_s']} | {r['peak_rss_mib']} |")
    text = "\n".join(table)
    print(f"\n{inp.bytes / 1e6:.0f} MB, {inp.lines:,} lines\n")
    print(text)
    return {"input": asdict(inp), "table": text, "rows": rows}


def fluent_bit_with(tuning: dict[str, str]) -> Callable[[Path, Path, Sink], Child]:
    return lambda run_dir, src, sink: start_fluent_bit(run_dir, src, sink, **tuning)


def mode_memory(args: argparse.Namespace) -> dict[str, Any]:
    sink = Sink()
    rows = []
    who = contenders(args, syslog_ng=False)
    # (size, contender, label, start): the shipper with both budgets, Fluent Bit (and its variants) whole
    cases: list[tuple[int, str, str, Callable[[Path, Path, Sink], Child]]] = []
    for size in sorted(set(args.sizes) | set(args.default_sizes)):
        if "shipper" in who and size in args.sizes:
            cases.append((size, "shipper", "unlimited budget", partial(
                start_shipper, BLAST_LOGS_STREAM_BUDGET_BYTES=UNLIMITED_BUDGET)))
        if "shipper" in who and size in args.default_sizes:
            cases.append((size, "shipper", "default budget", start_shipper))
        if "fluent-bit" in who and size in args.sizes:
            fb_variants = {"fluent-bit": {}, **parse_variants(args.fluent_bit_variant, "fluent-bit")}
            cases += [(size, name, "whole file", fluent_bit_with(extra)) for name, extra in fb_variants.items()]
    last_of_size = {size: i for i, (size, *_) in enumerate(cases)}
    try:
        for i, (size, name, label, start_one) in enumerate(cases):
            inp = ensure_input(args.workdir, size=size)
            sink.reset()
            child = start_one(args.workdir / "memory", inp.path, sink)
            label = f"{name}, {label}"
            try:
                if "default budget" not in label or inp.bytes < DEFAULT_STREAM_BUDGET_BYTES:
                    wait_for(partial(_all_events, sink, inp.lines), args.timeout, "every line", child)
                else:
                    wait_for(idle_after_budget(child), args.timeout, "the end of the file", child)
                stats = sink.stats()
                child.signal(signal.SIGTERM)
                status = child.wait(120)
            finally:
                if child.status is None:
                    child.proc.kill()
                    child.wait(10)
            took = stats["last_event"] - child.started
            after = sink.stats()
            rows.append({"size": inp.bytes, "lines": inp.lines, "case": label, "exit": status,
                         "seconds": round(took, 1), "events": after["events"],
                         "dropped_lines": after["dropped_lines"],
                         "cpu_s": round(child.cpu, 1), "peak_rss_mib": round(child.hwm / MiB, 1),
                         "peak_pss_mib": round(child.pss / MiB, 1),
                         "ru_maxrss_mib": round(child.maxrss / MiB, 1)})
            print(f"  {inp.bytes / 1e6:8.0f} MB {label}: peak RSS {child.hwm / MiB:.1f} MiB, "
                  f"PSS {child.pss / MiB:.1f} MiB, "
                  f"{took:.1f} s, exit {status}", flush=True)
            if name == "shipper" and after["events"] + after["dropped_lines"] != inp.lines:
                # each line shipped once or in one report; past the budget the events vary with the tail
                # ring's `ts` widths (docs/benchmarks.md, round six, Memory), this sum does not
                print(f"  WARNING: {after['events']:,} events + {after['dropped_lines']:,} lines reported "
                      f"dropped != {inp.lines:,} lines", flush=True)
            if inp.bytes > 500 * 1e6 and not args.keep and last_of_size[size] == i:
                inp.path.unlink()
                inp.path.with_suffix(".json").unlink()
    finally:
        sink.stop()
    table = ["| input | lines | contender, config | events at sink | lines reported dropped | wall s | CPU s "
             "| peak RSS MiB (VmHWM, summed) | peak PSS MiB |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['size'] / 1e6:,.0f} MB | {r['lines']:,} | {r['case']} | {r['events']:,} | "
                     f"{r['dropped_lines']:,} | "
                     f"{r['seconds']} | {r['cpu_s']} | {r['peak_rss_mib']} | {r['peak_pss_mib']} |")
    text = "\n".join(table)
    print()
    print(text)
    return {"table": text, "rows": rows}


def _all_events(sink: Sink, lines: int) -> bool:
    return bool(sink.stats()["events"] >= lines)


def idle_after_budget(child: Child) -> Callable[[], bool]:
    """With the default budget the shipper goes idle once the file is read (lines only enter the
    tail ring): true once its log says the budget was reached and it used < 5 % CPU for a second."""
    last: list[tuple[float, float]] = []

    def check() -> bool:
        if "stream budget reached" not in child.log.read_text(errors="replace"):
            return False
        now, cpu = time.monotonic(), child.cpu_now()
        last.append((now, cpu))
        while len(last) > 1 and now - last[1][0] >= 1.0:
            last.pop(0)
        t, c = last[0]
        return now - t >= 1.0 and (cpu - c) / (now - t) < 0.05

    return check


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("throughput", "limits", "live", "drain", "memory"))
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per run")
    parser.add_argument("--no-syslog-ng", action="store_true")
    parser.add_argument("--fluent-bit", metavar="PATH",
                        help="the Fluent Bit binary (default: $FLUENT_BIT, else fluent-bit on PATH; else skipped)")
    parser.add_argument("--fluent-bit-variant", action="append", metavar="NAME:KEY=VALUE,...",
                        help="throughput, memory: also run Fluent Bit with these bench/fluent-bit.conf.tmpl values")
    parser.add_argument("--only", metavar="WHO,...", help="only these of shipper, syslog-ng, fluent-bit")
    parser.add_argument("--variant", action="append", metavar="NAME:KEY=VALUE,...",
                        help="throughput: also run the shipper with these BLAST_LOGS_* settings, in the alternation")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a BLAST_LOGS_* setting for every shipper run of any mode")
    parser.add_argument("--rate", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--size", type=_size, default=_size("100M"))
    parser.add_argument("--sizes", type=lambda s: [_size(x) for x in s.split(",") if x], default="100M,2G")
    parser.add_argument("--default-sizes", type=lambda s: [_size(x) for x in s.split(",") if x],
                        default="10M,1G")
    parser.add_argument("--keep", action="store_true", help="keep files over 500 MB")
    args = parser.parse_args(argv)
    SHIPPER_SETTINGS.update(kv.split("=", 1) for kv in args.set)
    global FLUENT_BIT_PATH
    if not args.only or "fluent-bit" in args.only.split(","):
        FLUENT_BIT_PATH = find_fluent_bit(args.fluent_bit)
    if args.mode == "drain":
        args.runs = min(args.runs, 3)
    args.workdir.mkdir(parents=True, exist_ok=True)
    info = machine()
    print(f"machine: {info}", flush=True)
    result = {"machine": info, "mode": args.mode, "args": {k: str(v) for k, v in vars(args).items()}}
    result.update({"throughput": mode_throughput, "limits": mode_limits, "live": mode_live,
                   "drain": mode_drain, "memory": mode_memory}[args.mode](args))
    print(f"\nsaved {save(args.mode, result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
