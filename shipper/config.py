"""`blast-log-shipper run` configuration: flags win over `BLAST_LOGS_*` environment variables.

Every option is declared once, in `OPTIONS`: its name, type, default, environment variable, flag
and meaning. The table drives the command-line parser, the environment, the defaults, `--help`
and the README's option reference (`markdown_table`; a test keeps the README in step).

Reading never stops at the first mistake: `read_config` names every problem, one line each, and
still returns a configuration (defaults in place of malformed values), because the sidecar fails
open: it installs logwrap and answers its probes whatever its configuration (`shipper.standby`).
`load_config` is the strict form, raising `ConfigError`.
"""

from __future__ import annotations

import argparse
import os
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, NoReturn

from blastlogs.envnames import unknown_settings
from blastlogs.protocol import (
    MAX_BATCH_BYTES,
    MAX_BATCH_EVENTS,
    MAX_LINE_CHARS,
    valid_job_id,
    valid_k8s_name,
    valid_phase,
)

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
    Option("max_open_files", int, 256, "BLAST_LOGS_MAX_OPEN_FILES", "--max-open-files",
           "log files held open at once (at most a quarter of `ulimit -n`); past it the least "
           "recently read is closed and reopened by identity when it grows", positive=True),
    Option("read_size", int, 256 * 1024, "BLAST_LOGS_READ_SIZE", "--read-size", "bytes per bulk read",
           unit="bytes", positive=True),
    Option("line_prefix_bytes", int, 64 * 1024, "BLAST_LOGS_LINE_PREFIX_BYTES", "--line-prefix-bytes",
           "how much of an over-long line is held; the rest is skipped and counted", unit="bytes",
           positive=True),
    Option("max_line_chars", int, MAX_LINE_CHARS, "BLAST_LOGS_MAX_LINE_CHARS", "--max-line-chars",
           "line cap after sanitising, marker included", positive=True),
    Option("stream_budget_bytes", int, 64 * 1024 * 1024, "BLAST_LOGS_STREAM_BUDGET_BYTES",
           "--stream-budget-bytes", "bytes shipped per stream before only a tail is kept", unit="bytes"),
    Option("drop_report_bytes", int, 16 * 1024 * 1024, "BLAST_LOGS_DROP_REPORT_BYTES",
           "--drop-report-bytes", "past the stream budget, lines left out are reported (one marker) "
           "each time this many log bytes were left out, so that their volume space is given back "
           "while the container still writes; 0: one report at drain (the volume keeps them till "
           "then)", unit="bytes"),
    Option("tail_ring_bytes", int, 1024 * 1024, "BLAST_LOGS_TAIL_RING_BYTES", "--tail-ring-bytes",
           "size of that tail (encoded events), shipped at drain", unit="bytes"),
    Option("batch_max_events", int, MAX_BATCH_EVENTS, "BLAST_LOGS_BATCH_MAX_EVENTS", "--batch-max-events",
           "events per batch", positive=True),
    Option("batch_max_bytes", int, MAX_BATCH_BYTES, "BLAST_LOGS_BATCH_MAX_BYTES", "--batch-max-bytes",
           "encoded JSON bytes per batch", unit="bytes", positive=True),
    Option("linger", float, 0.3, "BLAST_LOGS_LINGER", "--linger",
           "how long a non-full batch waits for more lines (not at the end of a backlog read in bulk)",
           unit="s"),
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
    Option("sanitise_workers", str, "0", "BLAST_LOGS_SANITISE_WORKERS", "--sanitise-workers",
           "child processes that sanitise and encode lines while the shipper reads and sends, so a "
           "log flood gets a second core; each adds its own interpreter (about 35 MiB summed RSS, "
           "14 MiB PSS) and, with the compiled hot path, little speed: 0 (the default) keeps "
           "everything in the shipper's one process; `auto` starts one when at least 2 CPUs are "
           "available to the container (its affinity and cgroup CPU quota)"),
    Option("require_shipping", bool, False, "BLAST_LOGS_REQUIRE_SHIPPING", "--require-shipping",
           "exit 2 at once on a configuration error, before installing logwrap, so the pod's other "
           "containers never start without working shipping; by default the sidecar fails open: it "
           "installs logwrap, stays up, says what is wrong (stderr, `/healthz`, "
           "`blast_logs_shipper_config_errors`) and re-reads its configuration until it can ship"),
    Option("config_retry", float, 5.0, "BLAST_LOGS_CONFIG_RETRY", "--config-retry",
           "while the configuration is unusable, how often it is read again (a token file that "
           "appears later is picked up)", unit="s", positive=True),
    Option("volume_limit_bytes", int, 0, "BLAST_LOGS_VOLUME_LIMIT_BYTES", "--volume-limit-bytes",
           "the shared volume's size limit (the `emptyDir`'s `sizeLimit`, which the sidecar cannot "
           "see); when the logs hold more than 80% of it, `/healthz` says the pod risks eviction; "
           "0: unknown", unit="bytes"),
    Option("reclaim", bool, True, "BLAST_LOGS_RECLAIM", "--reclaim",
           "give back the volume space of each log's delivered prefix while the container still "
           "writes (punches holes: `fallocate` `PUNCH_HOLE`; where the filesystem cannot, said once "
           "and counted in `blast_logs_shipper_reclaim_errors`)"),
)
_BY_NAME: Final = {o.name: o for o in OPTIONS}
_PARSE: Final[dict[type[Value], Callable[[str], Value]]] = {str: str, int: int, float: float}


class ConfigError(ValueError):
    """The configuration cannot work; the message names the option."""


class _Parser(argparse.ArgumentParser):
    """Usage errors become problems to report (`read_config`), not an exit."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


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
    drop_report_bytes: int
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
    require_shipping: bool = False
    config_retry: float = 5.0
    volume_limit_bytes: int = 0
    reclaim: bool = True
    max_open_files: int = 256

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
    parser = _Parser(
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
            # values are checked by `_read`, so that a malformed one is a problem named, not an exit
            parser.add_argument(opt.flag, dest=opt.name, default=None, help=text)
    return parser


def _read(opt: Option, given: str | bool | None, env: Mapping[str, str]) -> Value:
    """One option's value: the flag's, else the environment's, else the default. Raises
    ConfigError naming the option when the value is malformed."""
    raw: str | bool | None = given if given is not None else env.get(opt.env)
    if opt.kind is str:
        if raw is None:
            return opt.default if opt.default is not None else ""
        return str(raw)
    if raw is None or raw == "":
        assert opt.default is not None
        return opt.default
    if isinstance(raw, bool):
        return raw
    if opt.kind is bool:
        return raw.strip().lower() in ("1", "true", "yes", "on")
    try:
        value = _PARSE[opt.kind](raw)
    except ValueError:
        raise ConfigError(f"{opt.env} / {opt.flag}: not a number: {raw!r}") from None
    if not isinstance(value, bool) and isinstance(value, int | float) and value < 0:
        raise ConfigError(f"{opt.flag} must not be negative")
    if opt.positive and not float(value) > 0:
        raise ConfigError(f"{opt.flag} must be positive")
    return value


@dataclass(frozen=True)
class Loaded:
    """What `read_config` found: a configuration to run with, and what is wrong with it (one line
    each). With problems, the configuration holds defaults in place of malformed values and empty
    identity or URLs where they were missing: enough to install logwrap and serve `/healthz`."""

    config: ShipperConfig
    problems: tuple[str, ...] = ()
    #: worth saying, but shipping is tried anyway
    warnings: tuple[str, ...] = ()


def read_config(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Loaded:
    """Flags, then `BLAST_LOGS_*`, then defaults; every problem named, none raised."""
    env = os.environ if environ is None else environ
    problems: list[str] = []
    try:
        args = vars(build_parser().parse_args(list(argv)))
    except ConfigError as exc:
        problems.append(f"command line: {exc}")
        args = {}
    got: dict[str, Value] = {}
    for opt in OPTIONS:
        if opt.name == "token":
            continue
        try:
            got[opt.name] = _read(opt, args.get(opt.name), env)
        except ConfigError as exc:
            problems.append(str(exc))
            got[opt.name] = opt.default if opt.default is not None else ""
    problems += [f"missing required setting {opt.env}" + (f" ({opt.flag})" if opt.flag else "")
                 for opt in OPTIONS if opt.required and not got[opt.name]]
    raw_urls = str(got.pop("aggregator_url"))
    urls = tuple(u.strip().rstrip("/") for u in raw_urls.split(",") if u.strip())
    if raw_urls and not urls:
        problems.append("BLAST_LOGS_AGGREGATOR_URL holds no URL")
    problems += [p for p in map(url_problem, urls) if p]
    problems += identity_problems(str(got["job_id"]), str(got["pod"]), str(got["phase"]))
    token, token_problem = _token(env, str(got.pop("token_file")))
    if token_problem:
        problems.append(token_problem)
    # A misspelt setting would otherwise leave its default in silence: said on stderr and in /healthz.
    warnings = unknown_settings(env, (o.env for o in OPTIONS), "blast-log-shipper run")
    if token and got["job_id"] and token.rpartition(".")[0] != got["job_id"]:
        warnings.append(f"the job token does not name job {got['job_id']!r} (BLAST_LOGS_JOB_ID): "
                        "the aggregator will likely refuse every batch (403)")
    volume = Path(str(got.pop("dir")))
    try:
        workers = _workers(str(got.pop("sanitise_workers")))
    except ConfigError as exc:
        problems.append(str(exc))
        workers = None
    got["phase"] = got["phase"] or str(default("phase"))
    got["poll_interval"] = max(float(got["poll_interval"]), 0.01)
    config = ShipperConfig(volume=volume, urls=urls, token=token, sanitise_workers=workers,
                           **got)  # type: ignore[arg-type]
    return Loaded(config, tuple(problems), tuple(warnings))


def load_config(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> ShipperConfig:
    """Flags, then `BLAST_LOGS_*`, then defaults. Raises ConfigError naming every problem."""
    loaded = read_config(argv, environ)
    if loaded.problems:
        raise ConfigError("; ".join(loaded.problems))
    return loaded.config


def url_problem(url: str) -> str | None:
    """Why an aggregator URL cannot work, or None."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        hint = f" (did you mean http://{url}?)" if "://" not in url else ""
        return (f"BLAST_LOGS_AGGREGATOR_URL / --aggregator-url: {url!r} is not an http:// or "
                f"https:// URL{hint}")
    try:
        parts.port  # noqa: B018 - raises for a port that is not a number
    except ValueError:
        return f"BLAST_LOGS_AGGREGATOR_URL / --aggregator-url: {url!r} has a malformed port"
    if parts.query or parts.fragment:
        return (f"BLAST_LOGS_AGGREGATOR_URL / --aggregator-url: {url!r}: give the base URL only "
                "(no query or fragment; the shipper adds /v1/ingest)")
    return None


def identity_problems(job_id: str, pod: str, phase: str) -> list[str]:
    """What the aggregator would refuse in the identity (the missing ones are named elsewhere)."""
    out = []
    if job_id and not valid_job_id(job_id):
        out.append(f"BLAST_LOGS_JOB_ID / --job-id: {job_id!r} is not a job id (letters, digits, "
                   "`.`, `_`, `-`; starting with a letter or digit; at most 128)")
    if pod and not valid_k8s_name(pod):
        out.append(f"BLAST_LOGS_POD / --pod: {pod!r} is not a Kubernetes name")
    if phase and not valid_phase(phase):
        out.append(f"BLAST_LOGS_PHASE / --phase: {phase!r} is not a phase name (lower-case letters, "
                   "digits and `_`)")
    return out


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


def _token(env: Mapping[str, str], token_file: str) -> tuple[str, str | None]:
    """The job token, and what is wrong when there is none."""
    token = env.get(_BY_NAME["token"].env, "").strip()
    if token_file:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            return "", f"cannot read the token file {token_file}: {why}"
        if not token:
            return "", f"the token file {token_file} is empty"
    if not token:
        return "", "no job token: set BLAST_LOGS_TOKEN or BLAST_LOGS_TOKEN_FILE"
    return token, None


def markdown_table() -> str:
    """The README's option reference, generated from `OPTIONS`."""
    rows = ["| flag | environment | default | meaning |", "|---|---|---|---|"]
    rows += [f"| {o.flags} | `{o.env}` | {o.shown_default} | {o.help} |" for o in OPTIONS]
    return "\n".join(rows) + "\n"
