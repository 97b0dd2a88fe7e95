"""The aggregator's options, each declared once: a field of `AggregatorConfig` with its default,
environment variable, `serve` flag and help (`option(...)`).

That one declaration drives `AggregatorConfig.from_env`, the defaults, `blast-log-aggregator serve
--help` (for options with a flag) and the README's reference table (`markdown_table()`, printed by
`python -m aggregator.config`; a test keeps the README in step). Flags win over environment variables.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from typing import Any, Final, Literal

import orjson

from aggregator import artifacts
from aggregator.errors import ConfigError
from blastlogs.protocol import (
    DEFAULT_PHASE_TABLE,
    MAX_BATCH_BYTES,
    MAX_BATCH_EVENTS,
    MAX_LINE_CHARS,
    valid_k8s_name,
    valid_phase,
)

PhaseTable = dict[str, dict[str, tuple[str, ...]]]
#: How an option's text is read: as is, an integer, a finite number, or a phase table file's path.
Kind = Literal["text", "int", "float", "phase_table"]
ENV_PREFIX: Final = "BLAST_LOGS_"
_SPEC: Final = "aggregator.option"
#: What a finalize keeps of staging: see `AggregatorConfig.staging_retention`.
STAGING_RETENTIONS: Final = ("compacted", "all")
#: Where finalizes run: see `AggregatorConfig.finalize_process`.
FINALIZE_PROCESSES: Final = ("child", "serving")


@dataclass(frozen=True)
class Option:
    """One option: its `AggregatorConfig` field, how it is read, where from, and what it means."""

    name: str
    kind: Kind
    default: Any
    help: str
    env: str | None = None
    flag: str | None = None
    minimum: float | None = None
    #: Set for a required option: why the service cannot run without it.
    required: str | None = None
    secret: bool = False
    maximum: float | None = None
    #: The values a text option may take (compared without case).
    choices: tuple[str, ...] | None = None

    def parse(self, raw: str) -> Any:
        """The value of `raw`, the option's text; ConfigError naming the variable when it is unusable."""
        where = self.env or self.flag or self.name
        if self.kind == "int":
            try:
                value = int(raw)
            except ValueError:
                raise ConfigError(f"{where}={raw!r} is not an integer") from None
            if self.minimum is not None and value < self.minimum:
                raise ConfigError(f"{where}={value} is below its minimum {self.minimum:g}")
            if self.maximum is not None and value > self.maximum:
                raise ConfigError(f"{where}={value} is above its maximum {self.maximum:g}")
            return value
        if self.kind == "float":
            try:
                number = float(raw)
            except ValueError:
                raise ConfigError(f"{where}={raw!r} is not a number") from None
            minimum = float(self.minimum or 0.0)
            if not math.isfinite(number) or number < minimum:
                raise ConfigError(f"{where}={raw!r} must be a finite number >= {minimum}")
            return number
        if self.kind == "phase_table":
            return load_phase_table(raw)
        if self.choices is not None and raw.upper() not in self.choices:
            raise ConfigError(f"{where}={raw!r} is not one of {', '.join(self.choices)}")
        if self.required is not None and not raw.strip():
            raise ConfigError(f"{where} is blank: {self.required}")
        return raw

    def from_env(self, env: Mapping[str, str]) -> Any:
        """The value `env` gives, or the default when the variable is unset or empty."""
        raw = env.get(self.env) if self.env else None
        if self.required is not None and not raw:
            raise ConfigError(f"{self.env} is not set: {self.required}")
        blank = raw is None or (raw.strip() == "" if self.kind in ("int", "float") else raw == "")
        return self.default_value() if blank else self.parse(raw)  # type: ignore[arg-type]

    def default_value(self) -> Any:
        return self.default() if callable(self.default) else self.default

    def type_text(self) -> str:
        """The option's type for people (the README table)."""
        bound = f" >= {self.minimum:g}" if self.minimum is not None else ""
        if self.minimum is not None and self.maximum is not None:
            bound = f" {self.minimum:g}-{self.maximum:g}"
        return {"text": "string", "int": f"integer{bound}", "float": f"number{bound}",
                "phase_table": "path of a JSON (or `.yaml`/`.yml`) file"}[self.kind]

    def default_text(self) -> str:
        if self.required is not None:
            return "required"
        if self.kind == "phase_table":
            return "built in"
        if self.default is None:
            return ""
        return f"`{self.default:g}`" if isinstance(self.default, float) else f"`{self.default}`"


def opt(*, help: str, env: str | None = None, flag: str | None = None, minimum: float | None = None,
        kind: Kind | None = None, required: str | None = None, secret: bool = False,
        maximum: float | None = None, choices: tuple[str, ...] | None = None) -> dict[str, Any]:
    """An option's declaration, as its `AggregatorConfig` field's metadata; `env` is the name after
    `BLAST_LOGS_`; `required` says why the service cannot run without it (then the field has no default)."""
    return {_SPEC: {"kind": kind, "help": help, "env": ENV_PREFIX + env if env else None, "flag": flag,
                    "minimum": minimum, "required": required, "secret": secret, "maximum": maximum,
                    "choices": choices}}


def _kind(default: object) -> Kind:
    if isinstance(default, bool) or not isinstance(default, int | float):
        return "text"
    return "int" if isinstance(default, int) else "float"


@dataclass(frozen=True)
class AggregatorConfig:
    """Everything the service reads from its flags and environment, with defaults: one field per option."""

    secret: str = field(repr=False, metadata=opt(
        env="SECRET", required="job tokens cannot be checked", secret=True,
        help="the key job tokens are derived from"))
    admin_token: str = field(repr=False, metadata=opt(
        env="ADMIN_TOKEN", required="finalize cannot be authorised", secret=True,
        help="the finalize (admin) token"))
    host: str = field(default="0.0.0.0", metadata=opt(flag="--host", help="address to listen on"))
    port: int = field(default=8080, metadata=opt(flag="--port", minimum=0, maximum=65535, help="port"))
    store_url: str = field(default="file:blast-logs-data", metadata=opt(
        env="STORE",
        help="`file:///abs/path`, `file:rel/path` (from the working directory) or `azure://<container>`"))
    azure_account_url: str | None = field(default=None, metadata=opt(
        env="AZURE_ACCOUNT_URL", kind="text",
        help="Azure: `DefaultAzureCredential` (workload identity) with this account URL"))
    azure_connection_string: str | None = field(default=None, repr=False, metadata=opt(
        env="AZURE_CONNECTION_STRING", kind="text", secret=True,
        help="Azure: a connection string instead (Azurite in development)"))
    max_body_bytes: int = field(default=MAX_BATCH_BYTES, metadata=opt(
        env="MAX_BODY_BYTES", minimum=1, help="largest request body, after inflating gzip (413 beyond)"))
    max_events: int = field(default=MAX_BATCH_EVENTS, metadata=opt(
        env="MAX_EVENTS", minimum=1, help="most events in one batch"))
    max_line_chars: int = field(default=MAX_LINE_CHARS, metadata=opt(
        env="MAX_LINE_CHARS", minimum=64, help="longer lines are cut (never refused)"))
    head_lines: int = field(default=artifacts.DEFAULT_HEAD_LINES, metadata=opt(
        env="HEAD_LINES", minimum=0, help="first lines of each stream kept in the artifacts"))
    tail_lines: int = field(default=artifacts.DEFAULT_TAIL_LINES, metadata=opt(
        env="TAIL_LINES", minimum=0, help="last lines of each stream kept in the artifacts"))
    chunk_events: int = field(default=artifacts.DEFAULT_CHUNK_EVENTS, metadata=opt(
        env="CHUNK_EVENTS", minimum=1, help="most events in one chunk artifact"))
    max_inflight_ingests: int = field(default=64, metadata=opt(
        env="MAX_INFLIGHT_INGESTS", minimum=1,
        help="ingests handled at once before new ones get 429; bounds memory at about this many MiB"))
    body_timeout: float = field(default=30.0, metadata=opt(
        env="BODY_TIMEOUT", minimum=0.1,
        help="seconds a request's body may take to arrive after its headers, else 408 and the connection is "
             "closed (a client trickling its body cannot hold an ingest slot for long)"))
    idle_timeout: float = field(default=75.0, metadata=opt(
        env="IDLE_TIMEOUT", minimum=0.1,
        help="seconds before a connection with no request in progress (idle keep-alive, or headers still "
             "trickling in) is closed"))
    finalize_max_wait: float = field(default=300.0, metadata=opt(
        env="FINALIZE_MAX_WAIT",
        help="cap, in seconds, on a finalize body's `wait_seconds` (without one, finalize does not wait)"))
    poll_seconds: float = field(default=0.25, metadata=opt(
        env="POLL_SECONDS", minimum=0.01,
        help="how often, in seconds, a waiting finalize re-lists staging (for eof objects, or a held lock)"))
    lock_ttl: float = field(default=6.0, metadata=opt(
        env="LOCK_TTL", minimum=1.0,
        help="seconds after which a finalize lock not renewed belongs to a dead replica and is taken over; "
             "a holder that cannot renew it within this time stops writing"))
    lock_renew: float = field(default=2.0, metadata=opt(
        env="LOCK_RENEW", minimum=0.1,
        help="seconds between renewals of a held finalize lock; at least three renewals fit in `LOCK_TTL` "
             "(a larger value is cut to a third of it)"))
    lock_wait: float = field(default=60.0, metadata=opt(
        env="LOCK_WAIT", help="seconds a finalize waits for another replica's lock before answering 503"))
    staging_retention: str = field(default="compacted", metadata=opt(
        env="STAGING_RETENTION",
        help="after a successful finalize, `compacted` deletes the staged batches (and older compacted objects) "
             "a stream's compacted object covers, so re-finalize still gives the same bytes; `all` keeps them"))
    compact_batches: int = field(default=500, metadata=opt(
        env="COMPACT_BATCHES", minimum=1,
        help="a replica compacts a stream in the background at its eof, and after storing this many new "
             "batches of it since its last compaction, so finalize reads about one object per stream"))
    compact_delay: float = field(default=30.0, metadata=opt(
        env="COMPACT_DELAY", minimum=0.0,
        help="seconds a replica waits before such a compaction, so a batch re-sent to another replica "
             "meanwhile (its first answer was lost: the shipper's timeout is 10 s) still finds its object "
             "and is answered `duplicate`; a later re-send is stored again and merged away"))
    temp_max_age: float = field(default=3600.0, metadata=opt(
        env="TEMP_MAX_AGE", minimum=1.0,
        help="local store: a finalize removes the job's `.tmp-*.part` files older than this many seconds "
             "(left by a crash mid-write)"))
    finalize_process: str = field(default="child", metadata=opt(
        env="FINALIZE_PROCESS",
        help="where finalizes run: `child`, a process the service starts for them (about 40 MiB more, 60 MiB "
             "with Azure; a big finalize's CPU then leaves this replica's ingests alone), or `serving`, the "
             "service's own process"))
    finalize_child_timeout: float = field(default=20.0, metadata=opt(
        env="FINALIZE_CHILD_TIMEOUT", minimum=2.0,
        help="with `FINALIZE_PROCESS=child`: a child silent this many seconds (it says it is alive every "
             "second) is killed, its finalizes answered 503, and the next finalize starts another"))
    read_concurrency: int = field(default=16, metadata=opt(
        env="READ_CONCURRENCY", minimum=1,
        help="the most storage requests (staged batches read, chunks written) a finalize has in flight; "
             "fewer while the store's answers slow down as they queue (adaptive, as Vector's)"))
    retry_after: int = field(default=2, metadata=opt(
        env="RETRY_AFTER", minimum=1,
        help="`Retry-After` seconds for storage trouble (503) and back-pressure (429)"))
    drain_seconds: float = field(default=1.0, metadata=opt(
        env="DRAIN_SECONDS", help="on SIGTERM, seconds `/readyz` answers 503 while requests are still served"))
    shutdown_timeout: float = field(default=30.0, metadata=opt(
        env="SHUTDOWN_TIMEOUT", help="then, seconds in-flight requests get to finish"))
    phase_table: PhaseTable = field(default_factory=lambda: dict(DEFAULT_PHASE_TABLE), metadata=opt(
        env="PHASE_TABLE", kind="phase_table",
        help="which containers feed which phases, `{container: {feeds: [...], primary: [...]}}`; the built-in "
             "table covers ElasticBLAST's containers"))
    log_level: str = field(default="INFO", metadata=opt(
        env="LOG_LEVEL", choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="`DEBUG`, `INFO`, `WARNING` or `ERROR`"))

    def __post_init__(self) -> None:
        for name, allowed in (("staging_retention", STAGING_RETENTIONS), ("finalize_process", FINALIZE_PROCESSES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{option_named(name).env}={getattr(self, name)!r} must be one of "
                                  f"{', '.join(allowed)}")

    def __repr__(self) -> str:
        # Never print the secret, the admin token or a connection string (logs, tracebacks).
        return f"AggregatorConfig(store_url={self.store_url!r}, ...)"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **flags: Any) -> AggregatorConfig:
        """Read `BLAST_LOGS_*` (flags given as keywords win, checked alike); raise ConfigError with one
        line per setting at fault, each naming its variable or flag."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        errors: list[str] = []
        for o in OPTIONS:
            try:
                values[o.name] = o.parse(str(flags[o.name])) if o.name in flags else o.from_env(env)
            except ConfigError as e:
                errors.append(str(e))
        if errors:
            raise ConfigError("\n".join(errors))
        return cls(**values)


def _option(f: Field[Any]) -> Option:
    default: object = f.default_factory if f.default_factory is not MISSING else (
        None if f.default is MISSING else f.default)
    spec = dict(f.metadata[_SPEC])
    spec["kind"] = spec["kind"] or _kind(default)
    if spec["kind"] == "float" and spec["minimum"] is None:
        spec["minimum"] = 0.0  # a negative number of seconds is never meant
    return Option(name=f.name, default=default, **spec)


#: Every option, in declaration order.
OPTIONS: Final = tuple(_option(f) for f in fields(AggregatorConfig))


def option_named(name: str) -> Option:
    """The option of `AggregatorConfig` field `name`."""
    return next(o for o in OPTIONS if o.name == name)


def markdown_table() -> str:
    """The README's reference of every option: flag or variable, type, default, meaning."""
    rows = ["| flag / variable | type | default | meaning |", "|---|---|---|---|"]
    for o in OPTIONS:
        where = " / ".join(f"`{n}`" for n in (o.flag, o.env) if n)
        rows.append(f"| {where} | {o.type_text()} | {o.default_text()} | {o.help} |")
    return "\n".join(rows) + "\n"


def load_phase_table(path: str) -> PhaseTable:
    """Read a phase table file: JSON, or YAML for `.yaml`/`.yml`, shaped like DEFAULT_PHASE_TABLE.

    `{"<container>": {"feeds": ["<phase>", ...], "primary": ["<phase>", ...]}, ...}`
    """
    where = f"BLAST_LOGS_PHASE_TABLE={path}"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{where}: cannot read: {e}") from None
    data: Any
    try:
        if path.endswith((".yaml", ".yml")):
            try:
                from ruamel.yaml import YAML  # YAML tables only; JSON needs no YAML parser
            except ImportError:
                raise ConfigError(f"{where}: a YAML table needs ruamel.yaml, which the aggregator image "
                                  "does not carry; give the table as JSON (as manifests/ does)") from None
            data = YAML(typ="safe").load(text)
        else:
            data = orjson.loads(text)
    except Exception as e:  # any parser's error is the file's fault
        raise ConfigError(f"{where}: not valid {'YAML' if path.endswith(('.yaml', '.yml')) else 'JSON'}: {e}") from None
    return parse_phase_table(data, where)


def parse_phase_table(data: object, where: str = "phase table") -> PhaseTable:
    """Check a phase table's shape: container names, phase names, primary phases among fed ones."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: must map container names to {{feeds, primary}}")
    table: PhaseTable = {}
    for container, entry in data.items():
        if not valid_k8s_name(container):
            raise ConfigError(f"{where}: {container!r} is not a container name")
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: {container}: must be an object with feeds and primary")
        feeds = _phases(entry.get("feeds"), f"{where}: {container}.feeds")
        primary = _phases(entry.get("primary", []), f"{where}: {container}.primary")
        if not feeds:
            raise ConfigError(f"{where}: {container}.feeds is empty")
        if not set(primary) <= set(feeds):
            raise ConfigError(f"{where}: {container}.primary must be among its feeds")
        table[container] = {"feeds": feeds, "primary": primary}
    return table


def _phases(value: object, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(valid_phase(p) for p in value):
        raise ConfigError(f"{where}: must be a list of phase names")
    return tuple(dict.fromkeys(value))


if __name__ == "__main__":
    print(markdown_table(), end="")
