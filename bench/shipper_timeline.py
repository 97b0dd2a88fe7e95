"""Where the shipper's wall time goes that is not its CPU: event-loop timelines of throughput runs.

    PYTHONPATH=$PWD .venv/bin/python bench/shipper_timeline.py [--runs 3] [--tree now=. --tree before=DIR]
        [--set KEY=VALUE] [--workdir /tmp/blast-bench] [--lines 1000000] [--keep DIR]

Each run ships the throughput bench's file whole into the counting sink (bench_shipper.py's harness:
budget lifted, timed from the start to the sink's last event), with the shipper's event loop
instrumented from inside (no PYTHONASYNCIODEBUG): every `select()` with how long it waited, its
timeout and the descriptors that woke it, and the time of the first read, the first send and the last
acknowledgement. Per run it prints:

- wall and CPU seconds (the whole process), user and system;
- start-up: from the start to the end of the imports and to the first read;
- between the first read and the last acknowledgement, the loop's idle time by cause: waiting on
  descriptors (the connections' answers, the self-pipe of a thread), on a timer (linger, polls,
  pacing) with nothing ready, and zero-timeout polls;
- the main thread's time waiting for a CPU (`/proc/self/task/*/schedstat`) and its involuntary
  context switches: on a shared 2-core machine, the wall that is neither CPU nor idle.

Trees alternate run by run (`--tree NAME=DIR`: PYTHONPATH for the shipper; built, compiled). `--keep`
writes each run's timeline (JSON) there. The instrumentation costs CPU (about 0.1 s per run): compare
runs of this script with each other, not with bench_shipper.py's numbers.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent


def child(argv: list[str]) -> int:
    """The shipper (`blast-log-shipper run`), its event loop recorded into $TIMELINE_OUT at exit."""
    import atexit
    import resource
    import selectors

    events: list[tuple[float, str, Any]] = []
    plain_select = selectors.EpollSelector.select

    def select(self: selectors.EpollSelector, timeout: float | None = None) -> Any:
        t = time.time()
        ready = plain_select(self, timeout)
        events.append((t, "select", (time.time() - t, timeout, [k.fd for k, _ in ready])))
        return ready

    selectors.EpollSelector.select = select  # type: ignore[method-assign]
    from shipper import reader, sender

    events.append((time.time(), "imported", None))

    def marked(cls: Any, name: str, kind: str) -> None:
        plain = getattr(cls, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            events.append((time.time(), kind, None))
            return plain(*args, **kwargs)

        setattr(cls, name, call)

    marked(reader.LineReader, "read", "read")
    marked(sender.Sender, "_send", "send")
    marked(sender.Sender, "_acked", "acked")

    def dump() -> None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        run, wait, _ = open(f"/proc/self/task/{os.getpid()}/schedstat").read().split()
        with open(os.environ["TIMELINE_OUT"], "w") as out:
            json.dump({"events": events, "utime": usage.ru_utime, "stime": usage.ru_stime,
                       "run_s": int(run) / 1e9, "runqueue_s": int(wait) / 1e9,
                       "involuntary": usage.ru_nivcsw}, out)

    atexit.register(dump)
    from shipper.cli import main

    sys.argv[0] = "blast-log-shipper"
    return main(argv)


def summary(timeline: dict[str, Any], started: float, last_event: float) -> dict[str, float]:
    events = timeline["events"]
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    for t, kind, _ in events:
        first.setdefault(kind, t)
        last[kind] = t
    window = (first["read"], min(last["acked"], last_event))
    idle: collections.Counter[str] = collections.Counter()
    for t, kind, info in events:
        if kind == "select" and window[0] <= t <= window[1]:
            waited, timeout, fds = info
            idle["fds" if fds else "timer" if timeout else "zero"] += waited
    return {
        "wall": last_event - started, "user": timeline["utime"], "sys": timeline["stime"],
        "imports_done": first["imported"] - started, "first_read": first["read"] - started,
        "first_send": first["send"] - started, "busy_window": window[1] - window[0],
        "idle_fds": idle["fds"], "idle_timer": idle["timer"], "idle_zero": idle["zero"],
        "runqueue": timeline["runqueue_s"], "involuntary": timeline["involuntary"],
    }


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--child"]:
        return child(args[1:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tree", action="append", default=[], metavar="NAME=DIR")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a shipper setting")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/blast-bench"))
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--keep", type=Path, help="write each run's timeline here")
    opts = parser.parse_args(args)
    sys.path.insert(0, str(BENCH))
    import bench_shipper

    trees = dict(t.split("=", 1) for t in opts.tree) or {"now": os.environ.get("PYTHONPATH", ".")}
    settings = dict(s.split("=", 1) for s in opts.set)
    inp = bench_shipper.ensure_input(opts.workdir, lines=opts.lines)
    sink = bench_shipper.Sink()
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            wrapper = Path(tmp) / "shipper"
            wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} {Path(__file__).resolve()} --child "$@"\n')
            wrapper.chmod(0o755)
            bench_shipper.SHIPPER = wrapper  # type: ignore[misc]
            for run in range(1, opts.runs + 1):
                for name, tree in trees.items():
                    out = Path(tmp) / "timeline.json"
                    os.environ["PYTHONPATH"] = str(Path(tree).resolve())
                    os.environ["TIMELINE_OUT"] = str(out)
                    shipped = bench_shipper.ship_once("shipper", inp, sink, opts.workdir / "timeline-run", 120,
                                                      **settings)
                    stats = sink.stats()
                    timeline = json.loads(out.read_text())
                    if opts.keep is not None:
                        opts.keep.mkdir(parents=True, exist_ok=True)
                        (opts.keep / f"timeline-{name}-{run}.json").write_text(out.read_text())
                    s = summary(timeline, stats["last_event"] - shipped.seconds, stats["last_event"])
                    rows.append((run, name, s))
                    ms = {k: round(v * 1000) for k, v in s.items() if k != "involuntary"}
                    print(f"run {run} {name}: wall {s['wall']:.2f} s, CPU {s['user']:.2f} + {s['sys']:.2f} s; "
                          f"imports done {ms['imports_done']} ms, first read {ms['first_read']} ms; idle between "
                          f"the first read and the last ack: on descriptors {ms['idle_fds']} ms, on timers "
                          f"{ms['idle_timer']} ms, zero-timeout polls {ms['idle_zero']} ms; waiting for a CPU "
                          f"{ms['runqueue']} ms ({s['involuntary']:.0f} involuntary switches)", flush=True)
    finally:
        sink.stop()
    print(f"load average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
