"""`blast-log-aggregator serve|token`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from typing import Any

from aiohttp import web

from aggregator.app import make_app, start_draining
from aggregator.auth import job_token, read_token
from aggregator.config import OPTIONS, AggregatorConfig, Option, option_named
from aggregator.errors import ConfigError
from aggregator.logs import setup_logging
from aggregator.logs_cli import add_logs_arguments, run_logs
from blastlogs.envnames import unknown_settings
from blastlogs.protocol import JOB_ID_RULE, valid_job_id
from blastlogs.version import installed_version

log = logging.getLogger("aggregator.cli")
PROG = "blast-log-aggregator"
EXIT_CONFIG = 2
SECRET_ENV = option_named("secret").env or ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description="Collect BLAST job pod logs and finalize them.")
    parser.add_argument("--version", action="version", version=f"{PROG} {installed_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP service",
                           epilog="Every other option is a BLAST_LOGS_* environment variable (README, "
                                  "`python -m aggregator.config`).")
    flagged = [o for o in OPTIONS if o.flag]
    for o in flagged:
        assert o.flag is not None
        serve.add_argument(o.flag, dest=o.name, type=_flag_type(o), default=None,
                           help=f"{o.help} (default {o.default_value()})")
    token = sub.add_parser("token", help=f"print a job's ingest token, or with --read its read token (from "
                                         f"{SECRET_ENV})")
    token.add_argument("job_id")
    token.add_argument("--read", action="store_true", help="the token that reads the job's logs (and only that)")
    logs = sub.add_parser("logs", help="print (and with -f follow) a job's logs")
    add_logs_arguments(logs)
    args = parser.parse_args(argv)

    if args.command == "token":
        return _token(args.job_id, read=args.read)
    if args.command == "logs":
        return run_logs(args)
    return _serve({o.name: getattr(args, o.name) for o in flagged if getattr(args, o.name) is not None})


def _flag_type(o: Option) -> type[int] | type[float] | type[str]:
    return {"int": int, "float": float}.get(o.kind, str)


def _token(job_id: str, *, read: bool = False) -> int:
    secret = os.environ.get(SECRET_ENV, "")
    if not secret:
        print(f"{PROG}: {SECRET_ENV} is not set", file=sys.stderr)
        return EXIT_CONFIG
    if not valid_job_id(job_id):
        print(f"{PROG}: {job_id!r} is not a job id ({JOB_ID_RULE})", file=sys.stderr)
        return EXIT_CONFIG
    print((read_token if read else job_token)(secret, job_id))
    return 0


def _serve(flags: dict[str, Any]) -> int:
    try:
        config = AggregatorConfig.from_env(**flags)
    except ConfigError as e:
        for line in str(e).splitlines():
            print(f"{PROG}: {line}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(config.log_level.upper())
    for line in unknown_settings(os.environ, (o.env for o in OPTIONS if o.env), f"{PROG} serve"):
        log.warning(line)
    host, port = config.host, config.port
    try:
        asyncio.run(serve(config))
    except ValueError as e:  # ConfigError from open_store: an unusable BLAST_LOGS_STORE or Azure settings
        print(f"{PROG}: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as e:
        print(f"{PROG}: cannot listen on {host}:{port}: {e.strerror or e}", file=sys.stderr)
        return 1
    return 0


async def serve(config: AggregatorConfig) -> None:
    """Serve until SIGTERM/SIGINT, then drain: /readyz turns 503, and in-flight requests may finish."""
    app = make_app(config)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=config.shutdown_timeout)
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.host, config.port)
        await site.start()
        log.info("listening", extra={"fields": {"host": config.host, "port": config.port}})
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("draining", extra={"fields": {"seconds": config.drain_seconds}})
        start_draining(app)
        await asyncio.sleep(config.drain_seconds)
    finally:
        await runner.cleanup()
        log.info("stopped")


if __name__ == "__main__":
    sys.exit(main())
