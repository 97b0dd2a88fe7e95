"""The job API's client for finalize. It never raises: the job API's finalizer must never fail on logs.

    result = await finalize("http://blast-logs-aggregator:8080", admin_token, "elb-123", wait_seconds=10)
    if result.ok: summary = result.body
    else: log(result.status, result.error)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import random
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from aggregator.auth import job_token
from blastlogs.protocol import FINALIZE_PATH
from blastlogs.retry import backoff_delay, parse_retry_after

__all__ = ["FinalizeResult", "finalize", "finalize_sync", "job_token"]

RETRY_STATUSES = frozenset({429, 502, 503, 504})
#: Extra seconds beyond `wait_seconds` for the whole call, attempts, and the pauses between them:
#: a dead replica's stale lock (`LOCK_TTL`, 6 s), the finalize itself (docs/benchmarks.md, "Full
#: size, four at once, Azurite": the issue's full-size shapes on a loaded 2-core machine took 3.5 s
#: (typical), 9-12 s (wide), 35 s (flood), 94-111 s (chatty: 10,800,000 retained lines)), and a
#: `LOCK_WAIT` (60 s) for a finalize of the same job already running on another replica: 6 + 111 + 60
#: < 180.
CLIENT_TIMEOUT_MARGIN = 180.0
CLIENT_ATTEMPTS = 4
#: Pauses between attempts follow `blastlogs.retry` (full jitter, at least `Retry-After`): the first
#: pause's ceiling, every pause's ceiling, and the longest `Retry-After` obeyed. The whole call's
#: deadline bounds them all.
CLIENT_BACKOFF = 0.5
CLIENT_BACKOFF_MAX = 8.0
CLIENT_RETRY_AFTER_MAX = 60.0


@dataclass(frozen=True)
class FinalizeResult:
    """The outcome: `ok` with the summary in `body`, or `error` (and `status` when the server answered)."""

    ok: bool
    status: int | None = None
    body: dict[str, Any] | None = None
    error: str | None = None
    attempts: int = 0


async def finalize(
    base_url: str,
    admin_token: str,
    job_id: str,
    *,
    wait_seconds: float | None = None,
    existing_last_output: Mapping[str, str] | None = None,
    timeout: float | None = None,  # noqa: ASYNC109 (a budget for retries too, not one await)
    attempts: int = CLIENT_ATTEMPTS,
) -> FinalizeResult:
    """POST /v1/jobs/{job_id}/finalize; retries 429/5xx-unavailable and connection errors within `timeout`.

    `timeout` bounds the whole call, retries included; by default `wait_seconds` plus 180 s
    (`CLIENT_TIMEOUT_MARGIN`): enough for a stale lock left by a dead replica (seconds, `LOCK_TTL`)
    and the finalize times measured for the issue's full-size big jobs (docs/benchmarks.md, "Full
    size, four at once, Azurite": at most 111 s), after waiting out another replica's finalize of the
    same job. Pass a larger `timeout` for jobs bigger than those.
    """
    try:
        return await _finalize(base_url, admin_token, job_id, wait_seconds, existing_last_output,
                               timeout, attempts)
    except asyncio.CancelledError:
        raise
    except Exception as e:  # the promise: never raise
        return FinalizeResult(ok=False, error=f"{type(e).__name__}: {e}")


async def _finalize(base_url: str, admin_token: str, job_id: str, wait_seconds: float | None,
                    existing: Mapping[str, str] | None, budget: float | None, attempts: int) -> FinalizeResult:
    total = budget if budget is not None else (wait_seconds or 0.0) + CLIENT_TIMEOUT_MARGIN
    deadline = time.monotonic() + total
    url = base_url.rstrip("/") + FINALIZE_PATH.format(job_id=urllib.parse.quote(job_id, safe=""))
    payload: dict[str, Any] = {}
    if wait_seconds is not None:
        payload["wait_seconds"] = wait_seconds
    if existing:
        payload["existing_last_output"] = dict(existing)
    headers = {"Authorization": f"Bearer {admin_token}", "Content-Type": "application/json"}
    last = FinalizeResult(ok=False, error="no attempt made")
    async with aiohttp.ClientSession() as session:
        for attempt in range(1, max(attempts, 1) + 1):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            retry_after: float | None = None
            try:
                async with session.post(url, data=orjson.dumps(payload), headers=headers,
                                        timeout=aiohttp.ClientTimeout(total=left)) as resp:
                    raw = await resp.read()
                    body = _json_object(raw)
                    if resp.status == 200 and body is not None:
                        return FinalizeResult(ok=True, status=200, body=body, attempts=attempt)
                    error = _error_text(resp.status, body, raw)
                    last = FinalizeResult(ok=False, status=resp.status, body=body, error=error, attempts=attempt)
                    if resp.status not in RETRY_STATUSES:
                        return last
                    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
            except aiohttp.InvalidURL as e:
                return FinalizeResult(ok=False, error=f"invalid aggregator URL: {e}", attempts=attempt)
            except (TimeoutError, aiohttp.ClientError, OSError) as e:
                last = FinalizeResult(ok=False, error=f"{type(e).__name__}: {e}" if str(e) else type(e).__name__,
                                      attempts=attempt)
            if attempt >= attempts:
                break
            pause = backoff_delay(attempt - 1, CLIENT_BACKOFF, CLIENT_BACKOFF_MAX, random.random(),
                                  retry_after, CLIENT_RETRY_AFTER_MAX)
            if time.monotonic() + pause >= deadline:
                break
            await asyncio.sleep(pause)
    return last


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def _error_text(status: int, body: dict[str, Any] | None, raw: bytes) -> str:
    if body is not None and isinstance(body.get("error"), str):
        detail = body.get("detail")
        return f"HTTP {status}: {body['error']}" + (f": {detail}" if isinstance(detail, str) else "")
    return f"HTTP {status}: {raw[:200].decode('utf-8', 'replace')}"


def finalize_sync(
    base_url: str,
    admin_token: str,
    job_id: str,
    *,
    wait_seconds: float | None = None,
    existing_last_output: Mapping[str, str] | None = None,
    timeout: float | None = None,
    attempts: int = CLIENT_ATTEMPTS,
) -> FinalizeResult:
    """`finalize` for synchronous callers; safe to call from inside a running event loop (uses a thread)."""

    def run() -> FinalizeResult:
        return asyncio.run(finalize(base_url, admin_token, job_id, wait_seconds=wait_seconds,
                                    existing_last_output=existing_last_output, timeout=timeout,
                                    attempts=attempts))

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        try:
            return run()
        except Exception as e:
            return FinalizeResult(ok=False, error=f"{type(e).__name__}: {e}")
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        try:
            return pool.submit(run).result()
        except Exception as e:
            return FinalizeResult(ok=False, error=f"{type(e).__name__}: {e}")
