"""`blast-log-shipper run|inject|demo`.

`run` logs structured JSON lines to stdout (one object per line: ts, level, logger, msg, and the
record's fields). `inject` and `demo` are imported only when used, so the sidecar loads neither
the YAML library nor the demo.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Final

from blastlogs import jsonlog

USAGE: Final = """usage: blast-log-shipper {run,inject,demo} [options]

  run      the sidecar: tail logs/*.log in the shared volume, ship them to the aggregator
  inject   add the sidecar and logwrap to Kubernetes YAML (stdin or -f FILE)
  demo     run the whole data path on this machine

`blast-log-shipper COMMAND --help` shows a command's options.
"""

def setup_logging(level: int = logging.INFO) -> None:
    jsonlog.setup_logging(sys.stdout, level)


def run_command(argv: Sequence[str]) -> int:
    from shipper.signals import catch_early

    catch_early()
    from shipper.config import EXIT_CONFIG, ConfigError, load_config
    from shipper.worker_process import WorkerPlan

    setup_logging()
    try:
        config = load_config(argv)
    except ConfigError as exc:
        logging.getLogger("shipper").error("bad configuration", extra={"error": str(exc)})
        print(f"blast-log-shipper run: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    workers = WorkerPlan.decide(config)
    workers.start(config.max_line_chars)  # their start-up overlaps importing the rest of the shipper
    from shipper.runner import run

    return run(config, workers)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "run":
        return run_command(rest)
    if command == "inject":
        from shipper.inject import main as inject_main

        return inject_main(rest)
    if command == "demo":
        from shipper.demo import main as demo_main

        return demo_main(rest)
    print(f"blast-log-shipper: unknown command {command!r}\n\n{USAGE}", file=sys.stderr, end="")
    return 2
