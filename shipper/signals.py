"""Signals that arrive before the event loop's handlers exist are remembered, not fatal.

Importing the runner's modules and building it takes a moment; a SIGTERM in that window (a sidecar
restarted just as the pod ends) would otherwise kill the shipper without a drain.
"""

from __future__ import annotations

import signal
from types import FrameType

HANDLED: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)

_pending: list[int] = []


def _remember(signum: int, _frame: FrameType | None) -> None:
    _pending.append(signum)


def catch_early() -> None:
    """Install plain handlers that only record the signal; call first thing."""
    for sig in HANDLED:
        signal.signal(sig, _remember)


def take_pending() -> list[int]:
    """The signals recorded so far, oldest first; forgets them."""
    out = list(_pending)
    _pending.clear()
    return out
