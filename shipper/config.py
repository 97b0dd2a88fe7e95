"""`blast-log-shipper run` configuration: every option once, flags win over `BLAST_LOGS_*` env.

| flag | environment | default | meaning |
|---|---|---|---|
| `--dir` | `BLAST_LOGS_DIR` | `/var/run/blast-logs` | the shared volume (`bin/`, `logs/`, `state/`) |
| `--aggregator-url` | `BLAST_LOGS_AGGREGATOR_URL` | (required) | aggregator base URLs, comma-separated, failed over among |
| `--token-file` | `BLAST_LOGS_TOKEN_FILE` | | file holding the job token (`BLAST_LOGS_TOKEN` takes the token itself; env only, never a flag, so it stays out of `ps`) |
| `--job-id` | `BLAST_LOGS_JOB_ID` | (required) | the job id |
| `--pod` | `BLAST_LOGS_POD` | (required) | this pod's name |
| `--namespace` | `BLAST_LOGS_NAMESPACE` | `""` | the pod's namespace (logged only) |
| `--phase` | `BLAST_LOGS_PHASE` | `unknown` | the pod's default phase, sent as `phase` |
| `--poll-interval` | `BLAST_LOGS_POLL_INTERVAL` | 0.25 s | how often files are polled for growth and new files (polling is portable: no inotify on every volume driver) |
| `--read-size` | `BLAST_LOGS_READ_SIZE` | 256 KiB | bytes per bulk read |
| `--line-prefix-bytes` | `BLAST_LOGS_LINE_PREFIX_BYTES` | 64 KiB | how much of an over-long line is held; the rest is skipped and counted |
| `--max-line-chars` | `BLAST_LOGS_MAX_LINE_CHARS` | 4000 | line cap after sanitising, marker included |
| `--stream-budget-bytes` | `BLAST_LOGS_STREAM_BUDGET_BYTES` | 64 MiB | bytes shipped per stream before only a tail is kept |
| `--tail-ring-bytes` | `BLAST_LOGS_TAIL_RING_BYTES` | 1 MiB | size of that tail (encoded events), shipped at drain |
| `--batch-max-events` | `BLAST_LOGS_BATCH_MAX_EVENTS` | 1000 | events per batch |
| `--batch-max-bytes` | `BLAST_LOGS_BATCH_MAX_BYTES` | 1 MiB | encoded JSON bytes per batch |
| `--linger` | `BLAST_LOGS_LINGER` | 0.3 s | how long a non-full batch waits for more lines |
| `--exit-settle` | `BLAST_LOGS_EXIT_SETTLE` | 1.0 s | after `<container>.exit` appears and the log stops growing this long, an unterminated last line is shipped |
| `--gzip` / `--no-gzip` | `BLAST_LOGS_GZIP` | off | gzip request bodies |
| `--request-timeout` | `BLAST_LOGS_REQUEST_TIMEOUT` | 10 s | per HTTP request |
| `--backoff-base` | `BLAST_LOGS_BACKOFF_BASE` | 0.2 s | first retry delay ceiling (full jitter, doubling) |
| `--backoff-max` | `BLAST_LOGS_BACKOFF_MAX` | 10 s | retry delay ceiling; `Retry-After` is honoured above it up to `--retry-after-max` |
| `--retry-after-max` | `BLAST_LOGS_RETRY_AFTER_MAX` | 60 s | the longest `Retry-After` obeyed |
| `--reject-backoff` | `BLAST_LOGS_REJECT_BACKOFF` | 30 s | wait after a 400/401/403/other 4xx before retrying (data is kept) |
| `--grace` | `BLAST_LOGS_GRACE` | 25 s | drain budget after SIGTERM |
| `--metrics-host` | `BLAST_LOGS_METRICS_HOST` | `127.0.0.1` | where `/metrics` and `/healthz` listen |
| `--metrics-port` | `BLAST_LOGS_METRICS_PORT` | 9090 | their port; 0 disables the server |
| `--sanitise-workers` | `BLAST_LOGS_SANITISE_WORKERS` | `auto` | child processes that sanitise and encode lines while the shipper reads and sends, so a log flood gets a second core (each adds about 14 MiB PSS); `auto` starts one when at least 2 CPUs are available to the container (its affinity and cgroup CPU quota: the injected default limit of 500m gives none), 0 keeps everything in the shipper's one process |
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from blastlogs.protocol import MAX_BATCH_BYTES, MAX_BATCH_EVENTS, MAX_LINE_CHARS

DEFAULT_DIR: Final = "/var/run/blast-logs"
DEFAULT_PHASE: Final = "unknown"
DEFAULT_POLL_INTERVAL: Final = 0.25
DEFAULT_READ_SIZE: Final = 256 * 1024
DEFAULT_LINE_PREFIX_BYTES: Final = 64 * 1024
DEFAULT_MAX_LINE_CHARS: Final = MAX_LINE_CHARS
DEFAULT_STREAM_BUDGET_BYTES: Final = 64 * 1024 * 1024
DEFAULT_TAIL_RING_BYTES: Final = 1024 * 1024
DEFAULT_BATCH_MAX_EVENTS: Final = MAX_BATCH_EVENTS
DEFAULT_BATCH_MAX_BYTES: Final = MAX_BATCH_BYTES
DEFAULT_LINGER: Final = 0.3
DEFAULT_EXIT_SETTLE: Final = 1.0
DEFAULT_REQUEST_TIMEOUT: Final = 10.0
DEFAULT_BACKOFF_BASE: Final = 0.2
DEFAULT_BACKOFF_MAX: Final = 10.0
DEFAULT_RETRY_AFTER_MAX: Final = 60.0
DEFAULT_REJECT_BACKOFF: Final = 30.0
DEFAULT_GRACE: Final = 25.0
DEFAULT_METRICS_HOST: Final = "127.0.0.1"
DEFAULT_METRICS_PORT: Final = 9090
#: `auto`: one worker when 2 or more CPUs are available (see `shipper.workers.auto_workers`).
DEFAULT_SANITISE_WORKERS: Final = "auto"

#: Exit status when the drain could not deliver everything within the grace budget.
EXIT_UNDELIVERED: Final = 3
#: Exit status for unusable configuration.
EXIT_CONFIG: Final = 2


class ConfigError(ValueError):
    """The configuration cannot work; the message names the option."""


@dataclass(frozen=True)
class ShipperConfig:
    volume: Path
    urls: tuple[str, ...]
    token: str = field(repr=False)
    job_id: str
    pod: str
    namespace: str = ""
    phase: str = DEFAULT_PHASE
    poll_interval: float = DEFAULT_POLL_INTERVAL
    read_size: int = DEFAULT_READ_SIZE
    line_prefix_bytes: int = DEFAULT_LINE_PREFIX_BYTES
    max_line_chars: int = DEFAULT_MAX_LINE_CHARS
    stream_budget_bytes: int = DEFAULT_STREAM_BUDGET_BYTES
    tail_ring_bytes: int = DEFAULT_TAIL_RING_BYTES
    batch_max_events: int = DEFAULT_BATCH_MAX_EVENTS
    batch_max_bytes: int = DEFAULT_BATCH_MAX_BYTES
    linger: float = DEFAULT_LINGER
    exit_settle: float = DEFAULT_EXIT_SETTLE
    gzip: bool = False
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    backoff_base: float = DEFAULT_BACKOFF_BASE
    backoff_max: float = DEFAULT_BACKOFF_MAX
    retry_after_max: float = DEFAULT_RETRY_AFTER_MAX
    reject_backoff: float = DEFAULT_REJECT_BACKOFF
    grace: float = DEFAULT_GRACE
    metrics_host: str = DEFAULT_METRICS_HOST
    metrics_port: int = DEFAULT_METRICS_PORT
    #: None: decided at start-up from the CPUs available (`auto`)
    sanitise_workers: int | None = None

    @property
    def logs_dir(self) -> Path:
        return self.volume / "logs"

    @property
    def state_dir(self) -> Path:
        return self.volume / "state"


# (flag, env suffix, type, default, help) for the plain options; the table above explains them.
_NUMERIC: Final[tuple[tuple[str, str, type, float | int, str], ...]] = (
    ("--poll-interval", "POLL_INTERVAL", float, DEFAULT_POLL_INTERVAL, "seconds between polls"),
    ("--read-size", "READ_SIZE", int, DEFAULT_READ_SIZE, "bytes per bulk read"),
    ("--line-prefix-bytes", "LINE_PREFIX_BYTES", int, DEFAULT_LINE_PREFIX_BYTES,
     "bytes of an over-long line held in memory"),
    ("--max-line-chars", "MAX_LINE_CHARS", int, DEFAULT_MAX_LINE_CHARS, "line cap in characters"),
    ("--stream-budget-bytes", "STREAM_BUDGET_BYTES", int, DEFAULT_STREAM_BUDGET_BYTES,
     "bytes shipped per stream before only a tail is kept"),
    ("--tail-ring-bytes", "TAIL_RING_BYTES", int, DEFAULT_TAIL_RING_BYTES, "size of the kept tail"),
    ("--batch-max-events", "BATCH_MAX_EVENTS", int, DEFAULT_BATCH_MAX_EVENTS, "events per batch"),
    ("--batch-max-bytes", "BATCH_MAX_BYTES", int, DEFAULT_BATCH_MAX_BYTES, "JSON bytes per batch"),
    ("--linger", "LINGER", float, DEFAULT_LINGER, "seconds a non-full batch waits"),
    ("--exit-settle", "EXIT_SETTLE", float, DEFAULT_EXIT_SETTLE,
     "idle seconds after <container>.exit before an unterminated last line ships"),
    ("--request-timeout", "REQUEST_TIMEOUT", float, DEFAULT_REQUEST_TIMEOUT, "seconds per request"),
    ("--backoff-base", "BACKOFF_BASE", float, DEFAULT_BACKOFF_BASE, "first retry delay ceiling"),
    ("--backoff-max", "BACKOFF_MAX", float, DEFAULT_BACKOFF_MAX, "retry delay ceiling"),
    ("--retry-after-max", "RETRY_AFTER_MAX", float, DEFAULT_RETRY_AFTER_MAX,
     "longest Retry-After obeyed"),
    ("--reject-backoff", "REJECT_BACKOFF", float, DEFAULT_REJECT_BACKOFF,
     "wait after a 4xx rejection (data kept)"),
    ("--grace", "GRACE", float, DEFAULT_GRACE, "drain budget in seconds after SIGTERM"),
    ("--metrics-port", "METRICS_PORT", int, DEFAULT_METRICS_PORT, "metrics/health port, 0 disables"),
)
_TEXT: Final[tuple[tuple[str, str, str | None, str], ...]] = (
    ("--dir", "DIR", DEFAULT_DIR, "the shared volume"),
    ("--aggregator-url", "AGGREGATOR_URL", None, "aggregator URLs, comma-separated"),
    ("--token-file", "TOKEN_FILE", None, "file holding the job token"),
    ("--job-id", "JOB_ID", None, "the job id"),
    ("--pod", "POD", None, "the pod name"),
    ("--namespace", "NAMESPACE", "", "the pod namespace"),
    ("--phase", "PHASE", DEFAULT_PHASE, "the pod's default phase"),
    ("--metrics-host", "METRICS_HOST", DEFAULT_METRICS_HOST, "metrics/health address"),
    ("--sanitise-workers", "SANITISE_WORKERS", DEFAULT_SANITISE_WORKERS,
     "sanitising worker processes: a number, or auto"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blast-log-shipper run",
        description="Tail logs/*.log in the shared volume and ship them to the aggregator. "
        "Every flag also reads BLAST_LOGS_<NAME> from the environment; flags win.",
    )
    for flag, env, default, text in _TEXT:
        parser.add_argument(flag, default=None, help=f"{text} (env BLAST_LOGS_{env}, default {default!r})")
    for flag, env, kind, num_default, text in _NUMERIC:
        parser.add_argument(flag, type=kind, default=None,
                            help=f"{text} (env BLAST_LOGS_{env}, default {num_default})")
    parser.add_argument("--gzip", action=argparse.BooleanOptionalAction, default=None,
                        help="gzip request bodies (env BLAST_LOGS_GZIP, default off)")
    return parser


def _attr(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def load_config(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> ShipperConfig:
    """Flags, then `BLAST_LOGS_*`, then defaults. Raises ConfigError naming what is wrong."""
    env = os.environ if environ is None else environ
    args = vars(build_parser().parse_args(list(argv)))
    texts: dict[str, str] = {}
    for flag, suffix, text_default, _ in _TEXT:
        name = _attr(flag)
        got = args[name] if args[name] is not None else env.get(f"BLAST_LOGS_{suffix}", text_default)
        texts[name] = "" if got is None else str(got)
    nums: dict[str, float] = {}
    for flag, suffix, kind, num_default, _ in _NUMERIC:
        name = _attr(flag)
        raw = args[name] if args[name] is not None else env.get(f"BLAST_LOGS_{suffix}")
        if raw is None or raw == "":
            nums[name] = num_default
            continue
        try:
            nums[name] = kind(raw)
        except ValueError:
            raise ConfigError(f"BLAST_LOGS_{suffix} / {flag}: not a number: {raw!r}") from None
        if nums[name] < 0:
            raise ConfigError(f"{flag} must not be negative")
    for name in ("read_size", "line_prefix_bytes", "batch_max_events", "batch_max_bytes", "max_line_chars"):
        if nums[name] <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive")
    gz = args["gzip"]
    if gz is None:
        gz = env.get("BLAST_LOGS_GZIP", "").strip().lower() in ("1", "true", "yes", "on")

    missing = [f"BLAST_LOGS_{suffix}" for flag, suffix, _, _ in _TEXT
               if suffix in ("AGGREGATOR_URL", "JOB_ID", "POD") and not texts[_attr(flag)]]
    if missing:
        raise ConfigError("missing required setting(s): " + ", ".join(missing))
    urls = tuple(u.strip().rstrip("/") for u in texts["aggregator_url"].split(",") if u.strip())
    if not urls:
        raise ConfigError("BLAST_LOGS_AGGREGATOR_URL holds no URL")
    return ShipperConfig(
        volume=Path(texts["dir"]),
        urls=urls,
        token=_token(env, texts["token_file"]),
        job_id=texts["job_id"],
        pod=texts["pod"],
        namespace=texts["namespace"],
        phase=texts["phase"] or DEFAULT_PHASE,
        poll_interval=max(nums["poll_interval"], 0.01),
        read_size=int(nums["read_size"]),
        line_prefix_bytes=int(nums["line_prefix_bytes"]),
        max_line_chars=int(nums["max_line_chars"]),
        stream_budget_bytes=int(nums["stream_budget_bytes"]),
        tail_ring_bytes=int(nums["tail_ring_bytes"]),
        batch_max_events=int(nums["batch_max_events"]),
        batch_max_bytes=int(nums["batch_max_bytes"]),
        linger=nums["linger"],
        exit_settle=nums["exit_settle"],
        gzip=bool(gz),
        request_timeout=nums["request_timeout"],
        backoff_base=nums["backoff_base"],
        backoff_max=nums["backoff_max"],
        retry_after_max=nums["retry_after_max"],
        reject_backoff=nums["reject_backoff"],
        grace=nums["grace"],
        metrics_host=texts["metrics_host"],
        metrics_port=int(nums["metrics_port"]),
        sanitise_workers=_workers(texts["sanitise_workers"]),
    )


def _workers(text: str) -> int | None:
    value = text.strip().lower()
    if value in ("", "auto"):
        return None
    try:
        count = int(value)
    except ValueError:
        raise ConfigError(f"--sanitise-workers: not a number or auto: {text!r}") from None
    if count < 0:
        raise ConfigError("--sanitise-workers must not be negative")
    return count


def _token(env: Mapping[str, str], token_file: str) -> str:
    token = env.get("BLAST_LOGS_TOKEN", "").strip()
    if token_file:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the token file {token_file}: {exc.strerror}") from None
    if not token:
        raise ConfigError("no job token: set BLAST_LOGS_TOKEN or BLAST_LOGS_TOKEN_FILE")
    return token
