"""The aggregator's configuration: every default as a named constant, read from `BLAST_LOGS_*` env."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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

DEFAULT_STORE = "file:blast-logs-data"
DEFAULT_HOST = "0.0.0.0"
DEFAULT_PORT = 8080
DEFAULT_MAX_BODY_BYTES = MAX_BATCH_BYTES
DEFAULT_MAX_EVENTS = MAX_BATCH_EVENTS
DEFAULT_MAX_LINE_CHARS = MAX_LINE_CHARS
DEFAULT_HEAD_LINES = artifacts.DEFAULT_HEAD_LINES
DEFAULT_TAIL_LINES = artifacts.DEFAULT_TAIL_LINES
DEFAULT_CHUNK_EVENTS = artifacts.DEFAULT_CHUNK_EVENTS
#: A request's body must arrive within this many seconds of its headers, else 408 and the connection is
#: closed: a client trickling its body cannot hold an ingest slot (or a connection) for long.
DEFAULT_BODY_TIMEOUT = 30.0
#: A connection with no request in progress (idle keep-alive, or headers still trickling in) is closed
#: after this many seconds (aiohttp's `run_app` default; a bare AppRunner would wait an hour).
DEFAULT_IDLE_TIMEOUT = 75.0
#: Ingests being handled at once before new ones get 429; bounds memory at about this many MiB.
DEFAULT_MAX_INFLIGHT_INGESTS = 64
#: A finalize body's `wait_seconds` is capped here; without one, finalize does not wait.
DEFAULT_FINALIZE_MAX_WAIT = 300.0
DEFAULT_FINALIZE_WAIT = 0.0
#: How often a waiting finalize re-lists staging (for eof objects, or a held lock).
DEFAULT_POLL_SECONDS = 0.25
#: A finalize lock older than this (and not renewed) belongs to a dead replica and is taken over.
DEFAULT_LOCK_TTL = 60.0
#: How long a finalize waits for another replica's lock before answering 503.
DEFAULT_LOCK_WAIT = 120.0
#: Staged batches read at once by a finalize.
DEFAULT_READ_CONCURRENCY = 16
#: `Retry-After` seconds for storage trouble (503) and back-pressure (429).
DEFAULT_RETRY_AFTER = 2
#: On SIGTERM: seconds /readyz answers 503 while still serving, then in-flight requests get this long.
DEFAULT_DRAIN_SECONDS = 1.0
DEFAULT_SHUTDOWN_TIMEOUT = 30.0

#: Job API client (`aggregator.client`): extra seconds beyond `wait_seconds`, and attempts.
CLIENT_TIMEOUT_MARGIN = 30.0
CLIENT_ATTEMPTS = 4
CLIENT_BACKOFF = 0.5

ENV_PREFIX = "BLAST_LOGS_"


@dataclass(frozen=True)
class AggregatorConfig:
    """Everything the service reads from its environment."""

    secret: str
    admin_token: str
    store_url: str = DEFAULT_STORE
    azure_account_url: str | None = None
    azure_connection_string: str | None = field(default=None, repr=False)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_events: int = DEFAULT_MAX_EVENTS
    max_line_chars: int = DEFAULT_MAX_LINE_CHARS
    head_lines: int = DEFAULT_HEAD_LINES
    tail_lines: int = DEFAULT_TAIL_LINES
    chunk_events: int = DEFAULT_CHUNK_EVENTS
    max_inflight_ingests: int = DEFAULT_MAX_INFLIGHT_INGESTS
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    finalize_max_wait: float = DEFAULT_FINALIZE_MAX_WAIT
    poll_seconds: float = DEFAULT_POLL_SECONDS
    lock_ttl: float = DEFAULT_LOCK_TTL
    lock_wait: float = DEFAULT_LOCK_WAIT
    read_concurrency: int = DEFAULT_READ_CONCURRENCY
    retry_after: int = DEFAULT_RETRY_AFTER
    drain_seconds: float = DEFAULT_DRAIN_SECONDS
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT
    phase_table: PhaseTable = field(default_factory=lambda: dict(DEFAULT_PHASE_TABLE))

    def __repr__(self) -> str:
        # Never print the secret, the admin token or a connection string (logs, tracebacks).
        return f"AggregatorConfig(store_url={self.store_url!r}, ...)"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AggregatorConfig:
        """Read `BLAST_LOGS_*`; raise ConfigError naming the variable at fault."""
        env = os.environ if env is None else env
        secret = env.get("BLAST_LOGS_SECRET", "")
        admin = env.get("BLAST_LOGS_ADMIN_TOKEN", "")
        if not secret:
            raise ConfigError("BLAST_LOGS_SECRET is not set: job tokens cannot be checked")
        if not admin:
            raise ConfigError("BLAST_LOGS_ADMIN_TOKEN is not set: finalize cannot be authorised")
        table_path = env.get("BLAST_LOGS_PHASE_TABLE")
        return cls(
            secret=secret,
            admin_token=admin,
            store_url=env.get("BLAST_LOGS_STORE") or DEFAULT_STORE,
            azure_account_url=env.get("BLAST_LOGS_AZURE_ACCOUNT_URL") or None,
            azure_connection_string=env.get("BLAST_LOGS_AZURE_CONNECTION_STRING") or None,
            max_body_bytes=_int(env, "MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES, 1),
            max_events=_int(env, "MAX_EVENTS", DEFAULT_MAX_EVENTS, 1),
            max_line_chars=_int(env, "MAX_LINE_CHARS", DEFAULT_MAX_LINE_CHARS, 64),
            head_lines=_int(env, "HEAD_LINES", DEFAULT_HEAD_LINES, 0),
            tail_lines=_int(env, "TAIL_LINES", DEFAULT_TAIL_LINES, 0),
            chunk_events=_int(env, "CHUNK_EVENTS", DEFAULT_CHUNK_EVENTS, 1),
            max_inflight_ingests=_int(env, "MAX_INFLIGHT_INGESTS", DEFAULT_MAX_INFLIGHT_INGESTS, 1),
            body_timeout=_float(env, "BODY_TIMEOUT", DEFAULT_BODY_TIMEOUT, 0.1),
            idle_timeout=_float(env, "IDLE_TIMEOUT", DEFAULT_IDLE_TIMEOUT, 0.1),
            finalize_max_wait=_float(env, "FINALIZE_MAX_WAIT", DEFAULT_FINALIZE_MAX_WAIT),
            poll_seconds=_float(env, "POLL_SECONDS", DEFAULT_POLL_SECONDS, 0.01),
            lock_ttl=_float(env, "LOCK_TTL", DEFAULT_LOCK_TTL, 1.0),
            lock_wait=_float(env, "LOCK_WAIT", DEFAULT_LOCK_WAIT),
            read_concurrency=_int(env, "READ_CONCURRENCY", DEFAULT_READ_CONCURRENCY, 1),
            retry_after=_int(env, "RETRY_AFTER", DEFAULT_RETRY_AFTER, 1),
            drain_seconds=_float(env, "DRAIN_SECONDS", DEFAULT_DRAIN_SECONDS),
            shutdown_timeout=_float(env, "SHUTDOWN_TIMEOUT", DEFAULT_SHUTDOWN_TIMEOUT),
            phase_table=load_phase_table(table_path) if table_path else dict(DEFAULT_PHASE_TABLE),
        )


def _int(env: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    raw = env.get(ENV_PREFIX + name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{ENV_PREFIX}{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise ConfigError(f"{ENV_PREFIX}{name}={value} is below its minimum {minimum}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    raw = env.get(ENV_PREFIX + name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{ENV_PREFIX}{name}={raw!r} is not a number") from None
    if not math.isfinite(value) or value < minimum:
        raise ConfigError(f"{ENV_PREFIX}{name}={raw!r} must be a finite number >= {minimum}")
    return value


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
            from ruamel.yaml import YAML  # YAML tables only; JSON needs no YAML parser

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
