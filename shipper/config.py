"""`blast-log-shipper run` configuration: flags win over `BLAST_LOGS_*` environment variables.

Every option is declared once, in `OPTIONS`: its name, type, default, environment variable, flag
and meaning. The table drives the command-line parser, the environment, the defaults, `--help`
and the README's option reference (`markdown_table`; a test keeps the README in step).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from blastlogs.protocol import MAX_BATCH_BYTES, MAX_BATCH_EVENTS, MAX_LINE_CHARS

#: Exit status when the drain could not deliver everything within the grace budget.
EXIT_UNDELIVERED: Final = 3
#: Exit status for unusable configuration.
EXIT_CONFIG: Final = 2

Value = str | int | float | bool


@dataclass(frozen=True)
class Option:
    """One option of `blast-log-shipper run`."""

    #: the key its value is read into (`load_config`)
    name: str
    #: `str`, `int`, `float` or `bool`
    kind: type[Value]
    #: the value when neither flag nor environment gives one; None: none (or required)
    default: Value | None
    env: str
    #: None: environment only (a secret must stay out of `ps`)
    flag: str | None
    help: str
    #: how the default reads in documentation: "s" (seconds) or "bytes" (KiB, MiB)
    unit: str = ""
    required: bool = False
    #: a number that must be more than 0 (every number must be at least 0)
    positive: bool = False

    @property
    def shown_default(self) -> str:
        if self.required:
            return "(required)"
        value = self.default
        if value is None:
            return ""
        if isinstance(value, bool):
            return "on" if value else "off"
        if isinstance(value, str):
            return f"`{value}`" if value else '`""`'
        if self.unit == "bytes":
            for size, name in ((1 << 20, "MiB"), (1 << 10, "KiB")):
                if value >= size and value % size == 0:
                    return f"{value // size:g} {name}"
        return f"{value:g} s" if self.unit == "s" else f"{value:g}"

    @property
    def flags(self) -> str:
        """The flag as documented (`--gzip` / `--no-gzip` for a switch)."""
        if self.flag is None:
            return ""
        return f"`{self.flag}` / `--no-{self.flag[2:]}`" if self.kind is bool else f"`{self.flag}`"


OPTIONS: Final[tuple[Option, ...]] = (
    Option("dir", str, "/var/run/blast-logs", "BLAST_LOGS_DIR", "--dir",
           "the shared volume (`bin/`, `logs/`, `state/`)"),
    Option("aggregator_url", str, None, "BLAST_LOGS_AGGREGATOR_URL", "--aggregator-url",
           "aggregator base URLs, comma-separated, failed over among, e.g. "
           "`http://blast-logs-aggregator:8080`. `https://` verifies against the system CA store (or "
           "`SSL_CERT_FILE` / `SSL_CERT_DIR`); HTTP proxies are not supported (`HTTP(S)_PROXY` is "
           "ignored: the aggregator is an in-cluster service)", required=True),
    Option("token", str, None, "BLAST_LOGS_TOKEN", None,
           "the job token; environment only, never a flag, so it stays out of `ps`"),
    Option("token_file", str, None, "BLAST_LOGS_TOKEN_FILE", "--token-file",
           "a file holding the job token (instead of `BLAST_LOGS_TOKEN`)"),
    Option("job_id", str, None, "BLAST_LOGS_JOB_ID", "--job-id", "the job id (Downward API)", required=True),
    Option("pod", str, None, "BLAST_LOGS_POD", "--pod", "this pod's name (Downward API)", required=True),
    Option("namespace", str, "", "BLAST_LOGS_NAMESPACE", "--namespace",
           "the pod's namespace (Downward API; logged only)"),
    Option("phase", str, "unknown", "BLAST_LOGS_PHASE", "--phase",
           "the pod's default phase, sent as `phase` in each batch"),
    Option("poll_interval", float, 0.25, "BLAST_LOGS_POLL_INTERVAL", "--poll-interval",
           "how often files are polled for growth and new files (polling is portable: no inotify on "
           "every volume driver); at least 0.01 s", unit="s"),
    Option("read_size", int, 256 * 1024, "BLAST_LOGS_READ_SIZE", "--read-size", "bytes per bulk read",
           unit="bytes", positive=True),
    Option("line_prefix_bytes", int, 64 * 1024, "BLAST_LOGS_LINE_PREFIX_BYTES", "--line-prefix-bytes",
           "how much of an over-long line is held; the rest is skipped and counted", unit="bytes",
           positive=True),
    Option("max_line_chars", int, MAX_LINE_CHARS, "BLAST_LOGS_MAX_LINE_CHARS", "--max-line-chars",
           "line cap after sanitising, marker included", positive=True),
    Option("stream_budget_bytes", int, 64 * 1024 * 1024, "BLAST_LOGS_STREAM_BUDGET_BYTES",
           "--stream-budget-bytes", "bytes shipped per stream before only a tail is kept", unit="bytes"),
    Option("tail_ring_bytes", int, 1024 * 1024, "BLAST_LOGS_TAIL_RING_BYTES", "--tail-ring-bytes",
           "size of that tail (encoded events), shipped at drain", unit="bytes"),
    Option("batch_max_events", int, MAX_BATCH_EVENTS, "BLAST_LOGS_BATCH_MAX_EVENTS", "--batch-max-events",
           "events per batch", positive=True),
    Option("batch_max_bytes", int, MAX_BATCH_BYTES, "BLAST_LOGS_BATCH_MAX_BYTES", "--batch-max-bytes",
           "encoded JSON bytes per batch", unit="bytes", positive=True),
    Option("linger", float, 0.3, "BLAST_LOGS_LINGER", "--linger",
           "how long a non-full batch waits for more lines", unit="s"),
    Option("linger_max", float, 1.5, "BLAST_LOGS_LINGER_MAX", "--linger-max",
           "how long a batch of a single line waits for a second one (a quiet stream sends at most one "
           "request per second's lines, not one per line; at least `--linger`)", unit="s"),
    Option("exit_settle", float, 1.0, "BLAST_LOGS_EXIT_SETTLE", "--exit-settle",
           "after `<container>.exit` appears and the log stops growing this long, an unterminated "
           "last line is shipped", unit="s"),
    Option("gzip", bool, False, "BLAST_LOGS_GZIP", "--gzip",
           "gzip request bodies (environment: `1`, `true`, `yes` or `on`)"),
    Option("request_timeout", float, 10.0, "BLAST_LOGS_REQUEST_TIMEOUT", "--request-timeout",
           "per HTTP request", unit="s"),
    Option("backoff_base", float, 0.2, "BLAST_LOGS_BACKOFF_BASE", "--backoff-base",
           "first retry delay ceiling (full jitter, doubling)", unit="s"),
    Option("backoff_max", float, 10.0, "BLAST_LOGS_BACKOFF_MAX", "--backoff-max",
           "retry delay ceiling; `Retry-After` is honoured above it up to `--retry-after-max`", unit="s"),
    Option("retry_after_max", float, 60.0, "BLAST_LOGS_RETRY_AFTER_MAX", "--retry-after-max",
           "the longest `Retry-After` obeyed", unit="s"),
    Option("reject_backoff", float, 30.0, "BLAST_LOGS_REJECT_BACKOFF", "--reject-backoff",
           "wait after a 400/401/403/other 4xx before retrying (data is kept)", unit="s"),
    Option("grace", float, 25.0, "BLAST_LOGS_GRACE", "--grace", "drain budget after SIGTERM", unit="s"),
    Option("metrics_host", str, "127.0.0.1", "BLAST_LOGS_METRICS_HOST", "--metrics-host",
           "where `/metrics` and `/healthz` listen"),
    Option("metrics_port", int, 9090, "BLAST_LOGS_METRICS_PORT", "--metrics-port",
           "their port; 0 disables the server"),
    Option("sanitise_workers", str, "auto", "BLAST_LOGS_SANITISE_WORKERS", "--sanitise-workers",
           "child processes that sanitise and encode lines while the shipper reads and sends, so a "
           "log flood gets a second core (each adds about 14 MiB PSS); `auto` starts one when at "
           "least 2 CPUs are available to the container (its affinity and cgroup CPU quota: the "
           "injected default limit of 500m gives none), 0 keeps everything in the shipper's one process"),
)
_BY_NAME: Final = {o.name: o for o in OPTIONS}
_PARSE: Final[dict[type[Value], Callable[[str], Value]]] = {str: str, int: int, float: float}


class ConfigError(ValueError):
    """The configuration cannot work; the message names the option."""


@dataclass(frozen=True)
class ShipperConfig:
    """The options, read and checked (`load_config`); the defaults are in `OPTIONS`."""

    volume: Path
    urls: tuple[str, ...]
    token: str = field(repr=False)
    job_id: str
    pod: str
    namespace: str
    phase: str
    poll_interval: float
    read_size: int
    line_prefix_bytes: int
    max_line_chars: int
    stream_budget_bytes: int
    tail_ring_bytes: int
    batch_max_events: int
    batch_max_bytes: int
    linger: float
    linger_max: float
    exit_settle: float
    gzip: bool
    request_timeout: float
    backoff_base: float
    backoff_max: float
    retry_after_max: float
    reject_backoff: float
    grace: float
    metrics_host: str
    metrics_port: int
    #: None: decided at start-up from the CPUs available (`auto`)
    sanitise_workers: int | None

    @property
    def logs_dir(self) -> Path:
        return self.volume / "logs"

    @property
    def state_dir(self) -> Path:
        return self.volume / "state"


def default(name: str) -> Value | None:
    """An option's default, by name."""
    return _BY_NAME[name].default


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blast-log-shipper run",
        description="Tail logs/*.log in the shared volume and ship them to the aggregator. "
        "Every flag also reads its BLAST_LOGS_* variable from the environment; flags win.",
    )
    for opt in OPTIONS:
        if opt.flag is None:
            continue
        text = f"{opt.help} (env {opt.env}, default {opt.shown_default or 'none'})".replace("%", "%%")
        if opt.kind is bool:
            parser.add_argument(opt.flag, dest=opt.name, action=argparse.BooleanOptionalAction,
                                default=None, help=text)
        else:
            parser.add_argument(opt.flag, dest=opt.name, type=_PARSE[opt.kind], default=None, help=text)
    return parser


def _read(opt: Option, given: Value | None, env: Mapping[str, str]) -> Value:
    """One option's value: the flag's, else the environment's, else the default."""
    if given is not None:
        value = given
    else:
        raw = env.get(opt.env)
        if opt.kind is str:
            return raw if raw is not None else (opt.default if opt.default is not None else "")
        if raw is None or raw == "":
            assert opt.default is not None
            return opt.default
        if opt.kind is bool:
            return raw.strip().lower() in ("1", "true", "yes", "on")
        try:
            value = _PARSE[opt.kind](raw)
        except ValueError:
            raise ConfigError(f"{opt.env} / {opt.flag}: not a number: {raw!r}") from None
    if not isinstance(value, bool) and isinstance(value, int | float) and value < 0:
        raise ConfigError(f"{opt.flag} must not be negative")
    return value


def load_config(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> ShipperConfig:
    """Flags, then `BLAST_LOGS_*`, then defaults. Raises ConfigError naming what is wrong."""
    env = os.environ if environ is None else environ
    args = vars(build_parser().parse_args(list(argv)))
    got = {opt.name: _read(opt, args.get(opt.name), env) for opt in OPTIONS if opt.name != "token"}
    for opt in OPTIONS:
        if opt.positive and not float(got[opt.name]) > 0:
            raise ConfigError(f"{opt.flag} must be positive")
    missing = [opt.env for opt in OPTIONS if opt.required and not got[opt.name]]
    if missing:
        raise ConfigError("missing required setting(s): " + ", ".join(missing))
    urls = tuple(u.strip().rstrip("/") for u in str(got.pop("aggregator_url")).split(",") if u.strip())
    if not urls:
        raise ConfigError("BLAST_LOGS_AGGREGATOR_URL holds no URL")
    token = _token(env, str(got.pop("token_file")))
    volume = Path(str(got.pop("dir")))
    workers = _workers(str(got.pop("sanitise_workers")))
    got["phase"] = got["phase"] or str(default("phase"))
    got["poll_interval"] = max(float(got["poll_interval"]), 0.01)
    return ShipperConfig(volume=volume, urls=urls, token=token, sanitise_workers=workers,
                         **got)  # type: ignore[arg-type]


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
    token = env.get(_BY_NAME["token"].env, "").strip()
    if token_file:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the token file {token_file}: {exc.strerror}") from None
    if not token:
        raise ConfigError("no job token: set BLAST_LOGS_TOKEN or BLAST_LOGS_TOKEN_FILE")
    return token


def markdown_table() -> str:
    """The README's option reference, generated from `OPTIONS`."""
    rows = ["| flag | environment | default | meaning |", "|---|---|---|---|"]
    rows += [f"| {o.flags} | `{o.env}` | {o.shown_default} | {o.help} |" for o in OPTIONS]
    return "\n".join(rows) + "\n"
