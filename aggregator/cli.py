"""`blast-log-aggregator serve|token`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from aiohttp import web

from aggregator.app import make_app, start_draining
from aggregator.auth import job_token
from aggregator.config import DEFAULT_HOST, DEFAULT_PORT, AggregatorConfig
from aggregator.errors import ConfigError
from aggregator.logs import setup_logging
from blastlogs.protocol import valid_job_id

log = logging.getLogger("aggregator.cli")
PROG = "blast-log-aggregator"
EXIT_CONFIG = 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description="Collect BLAST job pod logs and finalize them.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST})")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    token = sub.add_parser("token", help="print a job's ingest token (from BLAST_LOGS_SECRET)")
    token.add_argument("job_id")
    args = parser.parse_args(argv)

    if args.command == "token":
        return _token(args.job_id)
    return _serve(args.host, args.port)


def _token(job_id: str) -> int:
    secret = os.environ.get("BLAST_LOGS_SECRET", "")
    if not secret:
        print(f"{PROG}: BLAST_LOGS_SECRET is not set", file=sys.stderr)
        return EXIT_CONFIG
    if not valid_job_id(job_id):
        print(f"{PROG}: {job_id!r} is not a job id ([A-Za-z0-9][A-Za-z0-9._-]{{0,127}})", file=sys.stderr)
        return EXIT_CONFIG
    print(job_token(secret, job_id))
    return 0


def _serve(host: str, port: int) -> int:
    try:
        config = AggregatorConfig.from_env()
    except ConfigError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(os.environ.get("BLAST_LOGS_LOG_LEVEL", "INFO").upper())
    try:
        asyncio.run(serve(config, host, port))
    except ValueError as e:  # ConfigError from open_store: an unusable BLAST_LOGS_STORE or Azure settings
        print(f"{PROG}: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as e:
        print(f"{PROG}: cannot listen on {host}:{port}: {e.strerror or e}", file=sys.stderr)
        return 1
    return 0


async def serve(config: AggregatorConfig, host: str, port: int) -> None:
    """Serve until SIGTERM/SIGINT, then drain: /readyz turns 503, and in-flight requests may finish."""
    app = make_app(config)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=config.shutdown_timeout)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        log.info("listening", extra={"fields": {"host": host, "port": port}})
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
