"""The sidecar while its configuration cannot ship: up, probed, loud, and retrying.

A missing Secret, a missing job-id label or a malformed URL must not stop the job (issue 17): the
caller has installed logwrap and serves `/healthz` already; here the shipper names each problem
once on stderr and in its log, keeps them in `/healthz` and `blast_logs_shipper_config_errors`,
and reads its configuration again every `config_retry` seconds (a token file mounted from an
optional Secret appears once the Secret exists). It returns the configuration once it is usable,
or None on SIGTERM/SIGINT, promptly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Callable, Iterable

from shipper.config import Loaded
from shipper.health import Health
from shipper.signals import HANDLED, take_pending

log = logging.getLogger("shipper.standby")


def say(problems: Iterable[str], already: Iterable[str] = ()) -> None:
    """One stderr line (and one log record) per problem not said before."""
    seen = set(already)
    for problem in problems:
        if problem not in seen:
            log.error("configuration problem: not shipping", extra={"problem": problem})
            print(f"blast-log-shipper run: not shipping: {problem}", file=sys.stderr, flush=True)


async def standby(loaded: Loaded, reload: Callable[[], Loaded] | None, health: Health) -> Loaded | None:
    """Wait until `reload()` finds no problem (that configuration) or a signal comes (None)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in HANDLED:
        loop.add_signal_handler(sig, stop.set)
    if take_pending():
        stop.set()
    say(loaded.problems)
    log.warning("fail-open: logwrap installed, the job runs; logs are NOT shipped until the "
                "configuration is mended", extra={"problems": list(loaded.problems),
                                                  "retry_every": loaded.config.config_retry})
    current = loaded
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), current.config.config_retry)
        if stop.is_set():
            log.warning("stopping without having shipped: the configuration never became usable",
                        extra={"problems": list(current.problems)})
            return None
        if reload is None:
            continue
        fresh = await asyncio.to_thread(reload)  # reads the token file: not on the event loop
        say(fresh.problems, current.problems)
        health.set_problems(fresh.problems)
        if not fresh.problems:
            log.info("configuration usable now; shipping")
            return fresh
        current = fresh
