"""When to try again: `Retry-After` parsing and capped exponential backoff with full jitter.

One set of rules for every HTTP client in the project: `Retry-After` is delta-seconds or an HTTP
date (RFC 9110 10.2.3), anything else is ignored; a computed wait is uniform in
[0, min(cap, base * 2**attempt)] ("full jitter"), and never shorter than a `Retry-After` the server
asked for (itself capped, so a server cannot park a client for hours).
"""

from __future__ import annotations

import time


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a `Retry-After` header (delta-seconds or an HTTP date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    import email.utils  # only for an HTTP date: importing it costs every start 4-6 ms

    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - (time.time() if now is None else now), 0.0)


def backoff_delay(attempt: int, base: float, cap: float, rand: float,
                  retry_after: float | None = None, retry_after_max: float = 60.0) -> float:
    """Full jitter: `rand` (uniform in [0, 1)) times min(cap, base * 2**attempt); never less than
    `Retry-After`, which counts up to `retry_after_max`."""
    ceiling = min(cap, base * float(1 << min(attempt, 32)))
    delay = rand * ceiling
    if retry_after is not None:
        delay = max(delay, min(retry_after, retry_after_max))
    return delay
