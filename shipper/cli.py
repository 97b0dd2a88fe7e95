"""`blast-log-shipper run|inject|demo`.

`run` logs structured JSON lines to stdout (`blastlogs.jsonlog`). `inject` and `demo` live in
`blastlogs_tools` (deploy-time tools, the `tools` extra) and are imported only when used, so the
sidecar loads neither the YAML library nor the demo, and its image need not carry them.
"""

from __future__ import annotations

import gc
import importlib
import importlib.util
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Final

from blastlogs import jsonlog
from blastlogs.version import installed_version

USAGE: Final = """usage: blast-log-shipper {run,inject,demo} [options]

  run      the sidecar: tail logs/*.log in the shared volume, ship them to the aggregator
  inject   add the sidecar and logwrap to Kubernetes YAML (stdin or -f FILE)
  demo     run the whole data path on this machine

`blast-log-shipper COMMAND --help` shows a command's options; `--version` the version.
"""

def setup_logging(level: int = logging.INFO) -> None:
    jsonlog.setup_logging(sys.stdout, level)


#: The deploy-time tools: the module that holds each, and the modules it needs beyond the shipper's.
TOOLS: Final = {
    "inject": ("blastlogs_tools.inject", ("ruamel.yaml",)),
    "demo": ("blastlogs_tools.demo", ("aggregator", "aiohttp")),
}


def missing_module(names: Sequence[str]) -> str | None:
    """The first of `names` that cannot be imported here, or None when all can."""
    for name in names:
        try:
            if importlib.util.find_spec(name) is None:
                return name
        except ModuleNotFoundError:
            return name
    return None


def run_tool(command: str, argv: Sequence[str]) -> int:
    """Import a tool only when asked for (so `run` never loads it), or say in one line what to
    install when this installation (the shipper image, say) does not carry it."""
    module, needs = TOOLS[command]
    absent = missing_module((module.partition(".")[0], *needs))
    if absent is not None:
        print(f"blast-log-shipper {command}: not installed here (no module {absent!r}); "
              "install the tools extra: pip install 'blast-logs[tools]'", file=sys.stderr)
        return 2
    tool_main: Callable[[list[str]], int] = importlib.import_module(module).main
    return tool_main(list(argv))


def run_command(argv: Sequence[str]) -> int:
    # No cyclic garbage collection while the modules load: the ~40 collections it would run
    # then scan the tables being built again and again for about 440 objects of cyclic garbage.
    # One collection once they are loaded frees those, and `gc.freeze` keeps later collections
    # from scanning what start-up kept (docs/benchmarks.md, "The shipper's CPU per line, round six").
    gc.disable()
    try:
        return _run_command(argv)
    finally:
        gc.enable()


def _run_command(argv: Sequence[str]) -> int:
    from shipper.signals import catch_early

    catch_early()
    from shipper.config import EXIT_CONFIG, read_config
    from shipper.worker_process import WorkerPlan

    setup_logging()
    loaded = read_config(argv)
    for warning in loaded.warnings:
        logging.getLogger("shipper").warning("configuration warning", extra={"warning": warning})
        print(f"blast-log-shipper run: warning: {warning}", file=sys.stderr)
    if loaded.problems and loaded.config.require_shipping:
        # The other choice (`--require-shipping`): no logwrap, no start, so the job waits.
        for problem in loaded.problems:
            logging.getLogger("shipper").error("bad configuration", extra={"error": problem})
            print(f"blast-log-shipper run: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    workers = None
    if not loaded.problems:
        workers = WorkerPlan.decide(loaded.config)
        workers.start(loaded.config.max_line_chars)  # their start-up overlaps importing the rest
    from shipper.runner import run

    gc.collect()
    gc.freeze()  # what start-up made and kept is never scanned again
    gc.enable()
    return run(loaded, workers, reload=lambda: read_config(argv))


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command in ("--version", "-V"):
        print(f"blast-log-shipper {installed_version()}")
        return 0
    if command == "run":
        return run_command(rest)
    if command in TOOLS:
        return run_tool(command, rest)
    print(f"blast-log-shipper: unknown command {command!r}\n\n{USAGE}", file=sys.stderr, end="")
    return 2
