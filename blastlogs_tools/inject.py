"""`blast-log-shipper inject`: add the log shipper sidecar to Kubernetes YAML (docs/protocol.md sections 2, 3).

The rewrite is planned once on parsed data (`_plan`), then applied either to plain dicts (the job
API's `inject_pod_spec`) or as text insertions into the original YAML (`inject_documents`), so that
everything the plan does not touch stays byte for byte as it was: `${VAR}` placeholders, quoting,
comments, line folding, key order. The text result is re-parsed and checked against the planned
data; a document whose layout the text patcher cannot handle is re-emitted by ruamel instead.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import math
import re
import sys
from collections.abc import Iterable, Mapping, MutableMapping, MutableSequence, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Final, Literal

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError
from ruamel.yaml.scalarstring import DoubleQuotedScalarString

from blastlogs.protocol import APP_LABEL_PHASES, UNKNOWN_PHASE, valid_phase

SIDECAR_NAME: Final = "blast-logs-shipper"
VOLUME_NAME: Final = "blast-logs"
MOUNT_PATH: Final = "/var/run/blast-logs"
LOGWRAP_PATH: Final = MOUNT_PATH + "/bin/logwrap"
SHIPPER_COMMAND: Final = ("blast-log-shipper", "run")

DEFAULT_AGGREGATOR_URL: Final = "http://blast-logs-aggregator:8080"
DEFAULT_TOKEN_SECRET: Final = "blast-logs-token"
DEFAULT_TOKEN_KEY: Final = "token"
DEFAULT_JOB_ID_LABEL: Final = "elb-job-id"
DEFAULT_IMAGE: Final = "blast-logs-shipper:0.1.0"
DEFAULT_IMAGE_PULL_POLICY: Final = "IfNotPresent"
DEFAULT_VOLUME_SIZE_LIMIT: Final = "1Gi"
# Small on purpose: the sidecar's requests add to the pod's and must not starve BLAST.
DEFAULT_CPU_REQUEST: Final = "50m"
DEFAULT_MEMORY_REQUEST: Final = "64Mi"
DEFAULT_CPU_LIMIT: Final = "500m"
DEFAULT_MEMORY_LIMIT: Final = "256Mi"
#: The non-root user of the shipper image (Dockerfile.shipper).
DEFAULT_RUN_AS_USER: Final = 10001
#: The startup probe gives the sidecar this long to install logwrap before the pod fails.
STARTUP_PROBE_PERIOD_SECONDS: Final = 1
STARTUP_PROBE_FAILURES: Final = 120
#: The named container port of the sidecar's `/metrics` and `/healthz` (Prometheus, the kubelet).
METRICS_PORT_NAME: Final = "metrics"
#: Inside the pod the server listens on every interface, so the kubelet and Prometheus reach it.
METRICS_HOST: Final = "0.0.0.0"
#: The shipper's own defaults (`BLAST_LOGS_METRICS_PORT`, `BLAST_LOGS_GRACE` in shipper/config.py;
#: a test keeps them equal). Written out because the deploy-time tools do not import the shipper.
DEFAULT_METRICS_PORT: Final = 9090
HEALTH_PATH: Final = "/healthz"
#: Liveness: a shipper whose event loop stops answering for this long is restarted. `/healthz`
#: answers 200 while the shipper is degraded (bad configuration, aggregator down), so only a hung
#: process fails it.
LIVENESS_PERIOD_SECONDS: Final = 10
LIVENESS_TIMEOUT_SECONDS: Final = 5
LIVENESS_FAILURES: Final = 6
#: The shipper's drain budget after SIGTERM (`BLAST_LOGS_GRACE`), and what the pod's
#: terminationGracePeriodSeconds must add to it for the shipper to exit before SIGKILL.
DEFAULT_GRACE_SECONDS: Final = 25.0
TERMINATION_MARGIN_SECONDS: Final = 5
#: How the sidecar's resources are chosen: `auto` keeps a Guaranteed pod Guaranteed.
Qos = Literal["auto", "guaranteed", "burstable"]
QOS_CHOICES: Final[tuple[Qos, ...]] = ("auto", "guaranteed", "burstable")

#: Where each supported kind keeps its pod template (the pod spec is `<template>.spec`).
POD_TEMPLATE_PATHS: Final[dict[str, tuple[str, ...]]] = {
    "Pod": (),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
    "DaemonSet": ("spec", "template"),
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
}

_DOC_START_RE: Final = re.compile(r"^---(?:[ \t]|$)")
_PLAIN_SAFE_RE: Final = re.compile(r"[A-Za-z/_][A-Za-z0-9_./@=+-]*")
_YAML11_KEYWORDS: Final = frozenset(
    "y n yes no on off true false null".split()
)


@dataclass(frozen=True)
class InjectOptions:
    """What the sidecar looks like; every default is a named constant above."""

    aggregator_url: str = DEFAULT_AGGREGATOR_URL
    token_secret: str = DEFAULT_TOKEN_SECRET
    token_key: str = DEFAULT_TOKEN_KEY
    #: The pod's default phase; None derives it from the pod's `app` label.
    phase: str | None = None
    job_id_label: str = DEFAULT_JOB_ID_LABEL
    image: str = DEFAULT_IMAGE
    image_pull_policy: str = DEFAULT_IMAGE_PULL_POLICY
    volume_size_limit: str = DEFAULT_VOLUME_SIZE_LIMIT
    cpu_request: str = DEFAULT_CPU_REQUEST
    memory_request: str = DEFAULT_MEMORY_REQUEST
    cpu_limit: str = DEFAULT_CPU_LIMIT
    memory_limit: str = DEFAULT_MEMORY_LIMIT
    run_as_user: int = DEFAULT_RUN_AS_USER
    #: Containers left as they are (not wrapped, no mount): `--skip-container`.
    skip_containers: frozenset[str] = frozenset()
    #: `guaranteed`: the sidecar's requests equal its limits; `auto`: so when the pod is Guaranteed.
    qos: Qos = "auto"
    #: The shipper's drain budget (`BLAST_LOGS_GRACE`), which terminationGracePeriodSeconds must cover.
    grace_seconds: float = DEFAULT_GRACE_SECONDS
    metrics_port: int = DEFAULT_METRICS_PORT

    def termination_grace(self) -> int:
        """The terminationGracePeriodSeconds the drain needs: the grace budget and a margin."""
        return math.ceil(self.grace_seconds) + TERMINATION_MARGIN_SECONDS


class InjectError(ValueError):
    """The input cannot be injected safely; nothing is written."""


# ---------------------------------------------------------------------------------------------
# What we add


def pod_phase(labels: Mapping[str, Any] | None, options: InjectOptions) -> str:
    """The pod's default phase: `--phase`, else from the `app` label, else unknown."""
    if options.phase is not None:
        return options.phase
    app = (labels or {}).get("app")
    return APP_LABEL_PHASES.get(app, UNKNOWN_PHASE) if isinstance(app, str) else UNKNOWN_PHASE


def sidecar_resources(options: InjectOptions, guaranteed: bool) -> dict[str, Any]:
    """Requests and limits; in a Guaranteed pod requests equal limits, so the pod stays Guaranteed
    (and keeps static CPU pinning). Elsewhere the small requests leave BLAST the node."""
    limits = {"cpu": options.cpu_limit, "memory": options.memory_limit}
    if guaranteed:
        return {"requests": dict(limits), "limits": limits}
    return {"requests": {"cpu": options.cpu_request, "memory": options.memory_request}, "limits": limits}


def sidecar_container(options: InjectOptions, phase: str, guaranteed: bool = False) -> dict[str, Any]:
    """The shipper as a native sidecar (an init container with `restartPolicy: Always`).

    Nothing about it may stop the pod: the token's Secret is optional (the shipper then reports the
    missing token and the job runs), the startup probe waits only for logwrap, which the shipper
    installs before it reads its configuration, and the liveness probe's `/healthz` answers 200
    while the shipper is degraded.
    """

    def field_env(name: str, path: str) -> dict[str, Any]:
        return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}

    return {
        "name": SIDECAR_NAME,
        "image": options.image,
        "imagePullPolicy": options.image_pull_policy,
        "restartPolicy": "Always",
        "command": list(SHIPPER_COMMAND),
        "env": [
            field_env("BLAST_LOGS_JOB_ID", f"metadata.labels['{options.job_id_label}']"),
            field_env("BLAST_LOGS_POD", "metadata.name"),
            field_env("BLAST_LOGS_NAMESPACE", "metadata.namespace"),
            {
                "name": "BLAST_LOGS_TOKEN",
                "valueFrom": {
                    "secretKeyRef": {"name": options.token_secret, "key": options.token_key,
                                     "optional": True}
                },
            },
            {"name": "BLAST_LOGS_AGGREGATOR_URL", "value": options.aggregator_url},
            {"name": "BLAST_LOGS_PHASE", "value": phase},
            {"name": "BLAST_LOGS_METRICS_HOST", "value": METRICS_HOST},
            {"name": "BLAST_LOGS_METRICS_PORT", "value": str(options.metrics_port)},
            {"name": "BLAST_LOGS_GRACE", "value": f"{options.grace_seconds:g}"},
            *volume_limit_env(options.volume_size_limit),
        ],
        "ports": [{"name": METRICS_PORT_NAME, "containerPort": options.metrics_port, "protocol": "TCP"}],
        # The kubelet starts the next container only once this succeeds: logwrap is in place.
        "startupProbe": {
            "exec": {"command": ["test", "-x", LOGWRAP_PATH]},
            "periodSeconds": STARTUP_PROBE_PERIOD_SECONDS,
            "failureThreshold": STARTUP_PROBE_FAILURES,
        },
        "livenessProbe": {
            "httpGet": {"path": HEALTH_PATH, "port": METRICS_PORT_NAME},
            "periodSeconds": LIVENESS_PERIOD_SECONDS,
            "timeoutSeconds": LIVENESS_TIMEOUT_SECONDS,
            "failureThreshold": LIVENESS_FAILURES,
        },
        "resources": sidecar_resources(options, guaranteed),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": options.run_as_user,
            "runAsGroup": options.run_as_user,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [_our_mount()],
    }


def _our_volume(options: InjectOptions) -> dict[str, Any]:
    return {"name": VOLUME_NAME, "emptyDir": {"sizeLimit": options.volume_size_limit}}


def _our_mount() -> dict[str, Any]:
    return {"name": VOLUME_NAME, "mountPath": MOUNT_PATH}


# ---------------------------------------------------------------------------------------------
# The pod's QoS class (Kubernetes: Guaranteed when every container, init containers included, has
# cpu and memory limits and requests equal to them, an absent request defaulting to its limit)

_QUANTITY_RE: Final = re.compile(r"([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E|[eE][+-]?[0-9]+)?")
_SUFFIXES: Final[dict[str, Fraction]] = {
    "": Fraction(1), "m": Fraction(1, 1000),
    **{s: Fraction(1000) ** (i + 1) for i, s in enumerate("kMGTPE")},
    **{s + "i": Fraction(1024) ** (i + 1) for i, s in enumerate("KMGTPE")},
}


def volume_limit_env(size_limit: str) -> list[dict[str, str]]:
    """`BLAST_LOGS_VOLUME_LIMIT_BYTES` from the emptyDir's sizeLimit, so the shipper's /healthz
    warns before the kubelet would evict the pod (none for a placeholder it cannot read)."""
    limit = quantity(size_limit)
    if limit is None or limit <= 0:
        return []
    return [{"name": "BLAST_LOGS_VOLUME_LIMIT_BYTES", "value": str(int(limit))}]


def quantity(value: object) -> Fraction | None:
    """A Kubernetes quantity's exact value (`500m`, `1.5Gi`, `2`, `1e3`); None when it is not one
    (a `${VAR}` placeholder, say)."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    m = _QUANTITY_RE.fullmatch(str(value).strip())
    if m is None:
        return None
    number, suffix = Fraction(m.group(1)), m.group(2) or ""
    if suffix[:1] in ("e", "E"):
        return number * Fraction(10) ** int(suffix[1:])
    return number * _SUFFIXES[suffix]


QosClass = Literal["guaranteed", "burstable", "unknown"]


def qos_class(containers: Iterable[Mapping[str, Any]]) -> QosClass:
    """`guaranteed` or `burstable` (BestEffort included) as Kubernetes would class a pod of these
    containers; `unknown` when only placeholders (`${VAR}` that may render equal) stand between
    the requests and the limits."""
    found: QosClass = "guaranteed"
    for c in containers:
        resources = c.get("resources")
        resources = resources if isinstance(resources, Mapping) else {}
        limits, requests = resources.get("limits"), resources.get("requests")
        limits = limits if isinstance(limits, Mapping) else {}
        requests = requests if isinstance(requests, Mapping) else {}
        for name in ("cpu", "memory"):
            if limits.get(name) is None:
                return "burstable"
            if requests.get(name) is None:
                continue
            want, have = quantity(limits[name]), quantity(requests[name])
            if want is not None and have is not None:
                if want != have:
                    return "burstable"
            elif str(limits[name]) != str(requests[name]):
                found = "unknown"
    return found


# ---------------------------------------------------------------------------------------------
# The plan: pure, on any mapping (plain dicts or ruamel's)


@dataclass
class _Plan:
    """What one pod spec needs; references the spec's own container mappings."""

    sidecar: dict[str, Any] | None = None
    volume: dict[str, Any] | None = None
    mounts: list[MutableMapping[str, Any]] = field(default_factory=list)
    wraps: list[tuple[MutableMapping[str, Any], list[str]]] = field(default_factory=list)
    #: terminationGracePeriodSeconds to set (the pod has none).
    grace: int | None = None
    #: Containers named by --skip-container that were found (and left as they are).
    skipped: list[str] = field(default_factory=list)

    def empty(self) -> bool:
        return (self.sidecar is None and self.volume is None and not self.mounts and not self.wraps
                and self.grace is None)


def _is_ours(container: Mapping[str, Any]) -> bool:
    command = container.get("command")
    return (
        isinstance(command, Sequence)
        and not isinstance(command, str)
        and len(command) >= 2
        and isinstance(command[0], str)
        and command[0].rsplit("/", 1)[-1] == SHIPPER_COMMAND[0]
        and command[1] == SHIPPER_COMMAND[1]
    )


def _list_field(spec: Mapping[str, Any], key: str, where: str) -> list[Any]:
    value = spec.get(key)
    if value is None:
        return []
    if not isinstance(value, MutableSequence):
        raise InjectError(f"{where}: `{key}` must be a list, found {type(value).__name__}")
    for i, item in enumerate(value):
        if not isinstance(item, MutableMapping):
            raise InjectError(f"{where}: `{key}[{i}]` must be a mapping")
    return list(value)


def _same_path(a: object, b: str) -> bool:
    return isinstance(a, str) and a.rstrip("/") == b


def _plan(
    spec: Mapping[str, Any],
    labels: Mapping[str, Any] | None,
    options: InjectOptions,
    where: str,
    warnings: list[str],
) -> _Plan:
    """Decide what `spec` needs, refusing collisions with names and paths that are not ours."""
    plan = _Plan()
    init = _list_field(spec, "initContainers", where)
    main = _list_field(spec, "containers", where)
    volumes = _list_field(spec, "volumes", where)

    ours = [c for c in init if c.get("name") == SIDECAR_NAME and _is_ours(c)]
    for c in init + main:
        if c.get("name") == SIDECAR_NAME and not any(c is o for o in ours):
            raise InjectError(
                f"{where}: a container is already named {SIDECAR_NAME!r} but is not the blast-logs "
                f"shipper (its command is not `{' '.join(SHIPPER_COMMAND)}`)"
            )
    injected = bool(ours)

    for vol in volumes:
        if vol.get("name") != VOLUME_NAME:
            continue
        if not injected or set(vol) != {"name", "emptyDir"}:
            raise InjectError(
                f"{where}: a volume is already named {VOLUME_NAME!r} and it is not ours "
                "(rename it, or remove it to let inject add its emptyDir)"
            )
    if not any(v.get("name") == VOLUME_NAME for v in volumes):
        plan.volume = _our_volume(options)

    wrapped_names: list[str] = []
    for c in init + main:
        if any(c is o for o in ours):
            continue
        name = c.get("name")
        if name in options.skip_containers:
            plan.skipped.append(name)
            warnings.append(f"{where}: container {name!r} skipped (--skip-container): left as it is, "
                            "its output is not captured")
            continue
        for i, mount in enumerate(_list_field(c, "volumeMounts", f"{where}: container {name!r}")):
            at_our_path = _same_path(mount.get("mountPath"), MOUNT_PATH)
            if (at_our_path and mount.get("name") != VOLUME_NAME) or (
                mount.get("name") == VOLUME_NAME and not injected
            ):
                raise InjectError(
                    f"{where}: container {name!r} volumeMounts[{i}] "
                    f"({mount.get('name')!r} at {mount.get('mountPath')!r}) collides with the "
                    f"blast-logs volume {VOLUME_NAME!r} at {MOUNT_PATH}"
                )
        command = c.get("command")
        if command is None or (isinstance(command, Sequence) and len(command) == 0):
            raise InjectError(
                f"{where}: container {name!r} has no command (only args, or its image's entrypoint), "
                "so logwrap cannot wrap it and its output would not be captured; give it a command, "
                f"or leave it uncaptured with --skip-container {name}"
            )
        if isinstance(command, str) or not isinstance(command, MutableSequence):
            raise InjectError(f"{where}: container {name!r} has a command that is not a list; "
                              f"fix it, or leave it uncaptured with --skip-container {name}")
        if not isinstance(name, str) or not name:
            raise InjectError(f"{where}: a container with a command has no name")
        if command[0] != LOGWRAP_PATH:
            plan.wraps.append((c, [LOGWRAP_PATH, name, "--"]))
        mounts = c.get("volumeMounts") or []
        if not any(m.get("name") == VOLUME_NAME for m in mounts):
            plan.mounts.append(c)
        wrapped_names.append(name)

    phase = pod_phase(labels, options)
    guaranteed = _guaranteed([c for c in init + main if not any(c is o for o in ours)], options, where,
                             warnings)
    if not injected:
        plan.sidecar = sidecar_container(options, phase, guaranteed)
    else:
        kept = _plain(ours[0])
        if kept != sidecar_container(options, phase, guaranteed):
            warnings.append(f"{where}: kept the {SIDECAR_NAME} sidecar already there (its settings differ)")
    plan.grace = _termination_grace(spec, options, where, warnings)
    if not plan.empty() and options.job_id_label not in (labels or {}):
        warnings.append(
            f"{where}: the pod template has no label {options.job_id_label!r}; "
            "BLAST_LOGS_JOB_ID will be empty unless it is added"
        )
    return plan


def _guaranteed(containers: list[Any], options: InjectOptions, where: str, warnings: list[str]) -> bool:
    """Whether the sidecar's requests must equal its limits to keep the pod's QoS class."""
    if options.qos != "auto":
        return options.qos == "guaranteed"
    found = qos_class(containers)
    if found == "unknown":
        warnings.append(f"{where}: requests and limits differ only by placeholders, so the pod may be "
                        "Guaranteed once rendered; the sidecar's requests are kept below its limits "
                        "(--qos guaranteed to match them)")
    return found == "guaranteed"


def _termination_grace(spec: Mapping[str, Any], options: InjectOptions, where: str,
                       warnings: list[str]) -> int | None:
    """The terminationGracePeriodSeconds to set when the pod has none; a warning when the pod's
    own is shorter than the shipper's drain needs (a placeholder cannot be checked)."""
    need = options.termination_grace()
    have = spec.get("terminationGracePeriodSeconds")
    if have is None:
        return need
    if isinstance(have, int) and not isinstance(have, bool) and have < need:
        warnings.append(
            f"{where}: terminationGracePeriodSeconds {have} is shorter than the shipper's drain "
            f"budget ({options.grace_seconds:g} s, --grace) plus {TERMINATION_MARGIN_SECONDS} s: the "
            f"last lines may be lost when the pod is stopped; raise it to {need}, or lower --grace")
    return None


def _apply_plan(spec: MutableMapping[str, Any], plan: _Plan) -> None:
    """Carry out `plan` on the data: ours go first in every list (the text patcher does the same)."""
    if plan.grace is not None:
        spec["terminationGracePeriodSeconds"] = plan.grace
    if plan.volume is not None:
        if spec.get("volumes") is None:
            spec["volumes"] = []
        spec["volumes"].insert(0, plan.volume)
    if plan.sidecar is not None:
        if spec.get("initContainers") is None:
            spec["initContainers"] = []
        spec["initContainers"].insert(0, plan.sidecar)
    for c in plan.mounts:
        if c.get("volumeMounts") is None:
            c["volumeMounts"] = []
        c["volumeMounts"].insert(0, _our_mount())
    for c, prefix in plan.wraps:
        for i, item in enumerate(prefix):
            c["command"].insert(i, item)


def _plain(value: Any) -> Any:
    """ruamel's node types to plain JSON-like values, for comparisons."""
    return json.loads(json.dumps(value, default=str))


def _dig(doc: Any, path: Sequence[str]) -> Any:
    for key in path:
        if not isinstance(doc, Mapping):
            return None
        doc = doc.get(key)
    return doc


_Target = tuple[MutableMapping[str, Any], Mapping[str, Any] | None, str]


def _pod_spec_of(doc: Any, place: str) -> _Target | None:
    """The pod spec, its labels and a name for messages; None for kinds we pass through."""
    if not isinstance(doc, Mapping):
        return None
    kind = doc.get("kind")
    if not isinstance(kind, str) or kind not in POD_TEMPLATE_PATHS:
        return None
    name = _dig(doc, ("metadata", "name"))
    where = f"{place} ({kind} {name!s})"
    template = _dig(doc, POD_TEMPLATE_PATHS[kind]) if POD_TEMPLATE_PATHS[kind] else doc
    if not isinstance(template, Mapping):
        raise InjectError(f"{where}: has no pod template at {'.'.join(POD_TEMPLATE_PATHS[kind])}")
    spec = template.get("spec")
    if not isinstance(spec, MutableMapping):
        raise InjectError(f"{where}: has no pod spec")
    labels = _dig(template, ("metadata", "labels"))
    return spec, labels if isinstance(labels, Mapping) else None, where


def _targets(doc: Any, index: int) -> list[_Target]:
    """The pod specs of one document: its own, or its items' for a `kind: List` (`kubectl get -o`)."""
    place = f"document {index + 1}"
    kind = doc.get("kind") if isinstance(doc, Mapping) else None
    if isinstance(kind, str) and kind.endswith("List") and isinstance(doc.get("items"), MutableSequence):
        found = (_pod_spec_of(item, f"{place} ({kind}) items[{i}]") for i, item in enumerate(doc["items"]))
        return [t for t in found if t is not None]
    own = _pod_spec_of(doc, place)
    return [] if own is None else [own]


def _plans(doc: Any, index: int, options: InjectOptions, warnings: list[str],
           skipped: set[str]) -> list[tuple[MutableMapping[str, Any], _Plan]]:
    """Each pod spec of a document with its plan (empty ones left out)."""
    out = []
    for spec, labels, where in _targets(doc, index):
        plan = _plan(spec, labels, options, where, warnings)
        skipped.update(plan.skipped)
        if not plan.empty():
            out.append((spec, plan))
    return out


def _unused_skips(options: InjectOptions, skipped: set[str]) -> list[str]:
    return [f"--skip-container {name}: no container has this name"
            for name in sorted(options.skip_containers - skipped)]


def inject_pod_spec(
    pod_spec: Mapping[str, Any],
    *,
    options: InjectOptions = InjectOptions(),
    labels: Mapping[str, Any] | None = None,
    warnings: list[str] | None = None,
) -> dict[str, Any]:
    """A copy of a plain-dict pod spec with the sidecar, volume, mounts and wrapped commands.

    `labels` (the pod's) give the default phase when `options.phase` is None. Raises InjectError.
    """
    spec: dict[str, Any] = copy.deepcopy(dict(pod_spec))
    notes: list[str] = []
    plan = _plan(spec, labels, options, "pod spec", notes)
    _apply_plan(spec, plan)
    notes += _unused_skips(options, set(plan.skipped))
    if warnings is not None:
        warnings.extend(notes)
    return spec


# ---------------------------------------------------------------------------------------------
# YAML text


def _yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=2, offset=0)
    return yaml


def _scalar(value: str, *, double: bool = False) -> str:
    """A scalar as YAML text that reads back as this string in block and flow context."""
    if not double and (
        value == "--"
        or (_PLAIN_SAFE_RE.fullmatch(value) is not None and value.lower() not in _YAML11_KEYWORDS)
    ):
        return value
    return json.dumps(value, ensure_ascii=False)


def _flow(value: Any, *, double: bool = False) -> str:
    """`value` as flow YAML text, scalars plain where that is safe (or all double-quoted)."""
    if isinstance(value, Mapping):
        items = ", ".join(f"{_flow(k, double=double)}: {_flow(v, double=double)}" for k, v in value.items())
        return "{" + items + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_flow(v, double=double) for v in value) + "]"
    return _scalar(str(value), double=double)


def _block(value: Any, indent: int) -> list[str]:
    """`value` (a mapping or list) as block YAML lines, indented by `indent` spaces."""
    out = io.StringIO()
    _yaml().dump(value, out)
    return [" " * indent + line + "\n" for line in out.getvalue().splitlines()]


class _NoTextPatch(Exception):
    """The layout is one the text patcher does not handle; re-emit the document instead."""


@dataclass(order=True)
class _Edit:
    line: int
    col: int
    order: int
    text: str = field(compare=False)


def _dash_col(lines: list[str], line: int, col: int) -> int:
    """The column of the `- ` that introduces the block sequence item at (line, col)."""
    prefix = lines[line][:col]
    m = re.fullmatch(r"( *)- +", prefix)
    if m is None:
        raise _NoTextPatch(f"item at line {line + 1} does not start its line")
    return len(m.group(1))


def _prepend_item(lines: list[str], seq: Any, item: Any, order: int) -> _Edit:
    """An edit that puts `item` first in the existing sequence `seq`."""
    if seq.fa.flow_style():
        raise _NoTextPatch("flow sequence")
    line, col = seq.lc.item(0)
    dash = _dash_col(lines, line, col)
    if isinstance(item, str):
        text = [" " * dash + "- " + _scalar(item) + "\n"]
    else:
        text = _block([item], dash)
    return _Edit(line, 0, order, "".join(text))


def _prepend_flow(lines: list[str], parent: Any, key: str, items: list[Any], order: int) -> _Edit:
    line, col = parent.lc.value(key)
    if lines[line][col : col + 1] != "[":
        raise _NoTextPatch("flow sequence not found where expected")
    existing = parent[key]
    double = len(existing) > 0 and isinstance(existing[0], DoubleQuotedScalarString)
    texts = [_flow(i, double=double) for i in items]
    sep = ", " if len(existing) > 0 else ""
    return _Edit(line, col + 1, order, ", ".join(texts) + sep)


def _add_key(lines: list[str], mapping: Any, key: str, value: Any, anchors: Sequence[str], order: int) -> _Edit:
    """An edit that adds `key: value` to `mapping`, on its own lines before one of its keys."""
    keys = [k for k in anchors if k in mapping] + [k for k in list(mapping)[1:] if k not in anchors]
    for k in keys:
        line, col = mapping.lc.key(k)
        if lines[line][:col].strip() == "":
            return _Edit(line, 0, order, "".join(_block({key: value}, col)))
    raise _NoTextPatch(f"no line to put {key!r} before")


def _add_to_list(
    lines: list[str], mapping: Any, key: str, item: Any, anchors: Sequence[str], order: int
) -> _Edit:
    seq = mapping.get(key)
    if seq is None:
        if key in mapping:
            raise _NoTextPatch(f"{key} is null")
        return _add_key(lines, mapping, key, [item], anchors, order)
    if seq.fa.flow_style():
        if isinstance(item, dict) and key == "initContainers":
            raise _NoTextPatch("flow initContainers")
        return _prepend_flow(lines, mapping, key, [item], order)
    return _prepend_item(lines, seq, item, order)


def _text_edits(lines: list[str], spec: Any, plan: _Plan) -> list[_Edit]:
    """Text insertions that do to the original lines what `_apply_plan` does to the data."""
    edits: list[_Edit] = []
    if plan.grace is not None:
        edits.append(_add_key(lines, spec, "terminationGracePeriodSeconds", plan.grace, ("containers",), -1))
    if plan.volume is not None:
        edits.append(_add_to_list(lines, spec, "volumes", plan.volume, ("initContainers", "containers"), 0))
    if plan.sidecar is not None:
        edits.append(_add_to_list(lines, spec, "initContainers", plan.sidecar, ("containers",), 1))
    for c in plan.mounts:
        edits.append(_add_to_list(lines, c, "volumeMounts", _our_mount(), ("command", "args"), 2))
    for c, prefix in plan.wraps:
        command = c["command"]
        if command.fa.flow_style():
            edits.append(_prepend_flow(lines, c, "command", prefix, 3))
        else:
            for i, item in enumerate(prefix):
                e = _prepend_item(lines, command, item, 3)
                edits.append(_Edit(e.line, e.col, 3 + i, e.text))
    return edits


def _apply_edits(lines: list[str], edits: list[_Edit]) -> str:
    out = list(lines)
    for e in sorted(edits, reverse=True):
        if e.line >= len(out):
            raise _NoTextPatch("edit past the end")
        out[e.line] = out[e.line][: e.col] + e.text + out[e.line][e.col :]
    return "".join(out)


def _split_documents(text: str) -> list[str]:
    """The stream cut before each `---` line; each piece keeps its own marker line."""
    chunks: list[str] = []
    current: list[str] = []
    for line in text.splitlines(keepends=True):
        if _DOC_START_RE.match(line) and current:
            chunks.append("".join(current))
            current = []
        current.append(line)
    if current:
        chunks.append("".join(current))
    return chunks


def _safe_load_all(text: str) -> list[Any]:
    """The documents as plain data (the faster loader: no comments, no styles)."""
    return [d for d in YAML(typ="safe", pure=True).load_all(text) if d is not None]


def _inject_chunk(chunk: str, doc: Any, index: int, options: InjectOptions, warnings: list[str],
                  skipped: set[str]) -> str:
    """One document (its text and its round-trip parse), injected."""
    plans = _plans(doc, index, options, warnings, skipped)
    if not plans:
        return chunk
    lines = chunk.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    try:
        edits = [e for spec, plan in plans for e in _text_edits(lines, spec, plan)]
        patched: str | None = _apply_edits(lines, edits)
    except _NoTextPatch:
        patched = None
    for spec, plan in plans:
        _apply_plan(spec, plan)
    expected = [_plain(doc)]
    if patched is not None:
        try:
            if _safe_load_all(patched) == expected:
                return patched
        except YAMLError:
            pass
    yaml = _yaml()
    yaml.explicit_start = bool(_DOC_START_RE.match(chunk))
    out = io.StringIO()
    yaml.dump(doc, out)
    return out.getvalue()


def inject_documents(
    text: str, options: InjectOptions = InjectOptions(), warnings: list[str] | None = None
) -> str:
    """Kubernetes YAML (several documents) with every pod template injected; JSON answers JSON.

    Documents that need no change come back byte for byte. Raises InjectError (invalid YAML,
    collisions, a container that cannot be wrapped); notes for people (skipped containers) are
    appended to `warnings`.
    """
    if text.lstrip().startswith(("{", "[")):
        try:
            data = json.loads(text)
        except ValueError:
            pass  # YAML flow style, say: read as YAML below
        else:
            return _inject_json(text, data, options, warnings)
    try:
        expected_docs = len(_safe_load_all(text))
    except YAMLError as exc:
        raise InjectError(f"invalid YAML: {exc}") from exc
    notes: list[str] = []
    skipped: set[str] = set()
    pieces: list[str] = []
    index = 0
    for chunk in _split_documents(text):
        try:
            doc = _yaml().load(chunk)
        except YAMLError as exc:
            raise InjectError(f"cannot read document {index + 1} on its own: {exc}") from exc
        if doc is None:
            pieces.append(chunk)
            continue
        pieces.append(_inject_chunk(chunk, doc, index, options, notes, skipped))
        index += 1
    if index != expected_docs:
        raise InjectError(f"found {expected_docs} documents but could split only {index} by `---` lines")
    if warnings is not None:
        warnings.extend(notes + _unused_skips(options, skipped))
    return "".join(pieces)


def _inject_json(text: str, data: Any, options: InjectOptions, warnings: list[str] | None) -> str:
    """JSON in (one object, or an array of them), JSON out, indented like `kubectl -o json`;
    unchanged input comes back as it was."""
    notes: list[str] = []
    skipped: set[str] = set()
    docs = data if isinstance(data, list) else [data]
    plans = [p for i, doc in enumerate(docs) for p in _plans(doc, i, options, notes, skipped)]
    for spec, plan in plans:
        _apply_plan(spec, plan)
    if warnings is not None:
        warnings.extend(notes + _unused_skips(options, skipped))
    if not plans:
        return text
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


# ---------------------------------------------------------------------------------------------
# Command line


def _parser() -> argparse.ArgumentParser:
    d = InjectOptions()
    p = argparse.ArgumentParser(
        prog="blast-log-shipper inject",
        description="Add the blast-logs shipper sidecar to Kubernetes YAML (or JSON); writes the result to "
        "stdout. A container with no command cannot be wrapped: inject refuses the input unless it is "
        "named with --skip-container.",
    )
    p.add_argument("-f", "--filename", default="-", help="YAML file to read; - for stdin (default)")
    p.add_argument("--aggregator-url", default=d.aggregator_url, help="default %(default)s")
    p.add_argument("--token-secret", default=d.token_secret, help="Secret with the job token; may hold ${VAR}")
    p.add_argument("--token-key", default=d.token_key, help="key in that Secret (default %(default)s)")
    p.add_argument("--phase", default=None, help="the pod's default phase (default: from its app label)")
    p.add_argument("--job-id-label", default=d.job_id_label, help="pod label with the job id")
    p.add_argument("--image", default=d.image, help="shipper image (default %(default)s)")
    p.add_argument("--image-pull-policy", default=d.image_pull_policy)
    p.add_argument("--volume-size-limit", default=d.volume_size_limit, help="emptyDir sizeLimit")
    p.add_argument("--cpu-request", default=d.cpu_request)
    p.add_argument("--memory-request", default=d.memory_request)
    p.add_argument("--cpu-limit", default=d.cpu_limit)
    p.add_argument("--memory-limit", default=d.memory_limit)
    p.add_argument("--run-as-user", type=int, default=d.run_as_user)
    p.add_argument("--skip-container", action="append", default=[], metavar="NAME",
                   help="leave this container as it is, its output not captured (repeatable)")
    p.add_argument("--qos", choices=QOS_CHOICES, default=d.qos,
                   help="guaranteed: the sidecar's requests equal its limits; auto (default): so when "
                        "every container of the pod has requests equal to limits (a Guaranteed pod)")
    p.add_argument("--grace", type=float, default=d.grace_seconds,
                   help="the shipper's drain budget in seconds (BLAST_LOGS_GRACE, default %(default)g); "
                        "terminationGracePeriodSeconds is set to it plus "
                        f"{TERMINATION_MARGIN_SECONDS} s when the pod has none, and checked when it has")
    p.add_argument("--metrics-port", type=int, default=d.metrics_port,
                   help=f"the sidecar's /metrics and /healthz port, named {METRICS_PORT_NAME!r} "
                        "(default %(default)s)")
    return p


def _usage_error(args: argparse.Namespace) -> str | None:
    """What is wrong with the flags' values, in one line; None when nothing is."""
    if args.phase is not None and not valid_phase(args.phase):
        return f"invalid --phase {args.phase!r}"
    if not (math.isfinite(args.grace) and args.grace >= 0):
        return f"--grace must be a number of seconds >= 0, got {args.grace!r}"
    if not 1 <= args.metrics_port <= 65535:
        return f"--metrics-port must be 1-65535 (the kubelet probes it), got {args.metrics_port}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """`blast-log-shipper inject`: 0 on success, 1 when refusing (nothing written), 2 for usage."""
    args_in = list(sys.argv[1:] if argv is None else argv)
    if args_in[:1] == ["inject"]:
        args_in = args_in[1:]
    try:
        args = _parser().parse_args(args_in)
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    usage = _usage_error(args)
    if usage is not None:
        print(f"blast-log-shipper inject: error: {usage}", file=sys.stderr)
        return 2
    options = InjectOptions(
        aggregator_url=args.aggregator_url,
        token_secret=args.token_secret,
        token_key=args.token_key,
        phase=args.phase,
        job_id_label=args.job_id_label,
        image=args.image,
        image_pull_policy=args.image_pull_policy,
        volume_size_limit=args.volume_size_limit,
        cpu_request=args.cpu_request,
        memory_request=args.memory_request,
        cpu_limit=args.cpu_limit,
        memory_limit=args.memory_limit,
        run_as_user=args.run_as_user,
        skip_containers=frozenset(args.skip_container),
        qos=args.qos,
        grace_seconds=args.grace,
        metrics_port=args.metrics_port,
    )
    try:
        if args.filename == "-":
            text = sys.stdin.read()
        else:
            with open(args.filename, encoding="utf-8") as f:
                text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        print(f"blast-log-shipper inject: error: cannot read {args.filename}: {exc}", file=sys.stderr)
        return 1
    warnings: list[str] = []
    try:
        result = inject_documents(text, options, warnings)
    except InjectError as exc:
        print(f"blast-log-shipper inject: error: {exc}", file=sys.stderr)
        return 1
    for w in warnings:
        print(f"blast-log-shipper inject: {w}", file=sys.stderr)
    sys.stdout.write(result)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
