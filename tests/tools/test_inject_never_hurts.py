"""`inject` never hurts the pod (issue 17): an optional token Secret, the pod's QoS class kept,
probes and metrics on a named port, the termination grace checked against the drain budget,
containers it cannot wrap refused unless skipped, `kind: List` and JSON handled."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import urllib.request
from fractions import Fraction
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from conftest import free_port
from k8s_templates import FIXTURES, K8S_VERSIONS, NO_COMMAND, ROOT, load_all, render
from ruamel.yaml import YAML
from shipper_helpers import eventually, start_shipper

from blastlogs_tools.inject import (
    DEFAULT_GRACE_SECONDS,
    DEFAULT_METRICS_PORT,
    LOGWRAP_PATH,
    MOUNT_PATH,
    SIDECAR_NAME,
    InjectError,
    InjectOptions,
    inject_documents,
    inject_pod_spec,
    qos_class,
    quantity,
)
from shipper.config import default as shipper_default


def pod(containers: str, extra: str = "") -> str:
    return f"apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  labels: {{elb-job-id: j1}}\nspec:\n{extra}" \
           f"  containers:\n{containers}"


def sidecar_of(spec: dict[str, Any]) -> dict[str, Any]:
    (sidecar,) = [c for c in spec.get("initContainers", []) if c["name"] == SIDECAR_NAME]
    return sidecar


def validate(docs: list[Any]) -> None:
    for version in K8S_VERSIONS:
        for doc in docs:
            kubernetes_validate.validate(doc, version, strict=True)


def run_inject(args: list[str], stdin_text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shipper", "inject", *args], input=stdin_text,
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


GUARANTEED = (
    "  - name: blast\n    image: busybox\n    command: [sh, -c, 'true']\n"
    "    resources:\n      requests: {cpu: '2', memory: 4Gi}\n      limits: {cpu: 2000m, memory: 4096Mi}\n"
)


# --- the token Secret ---------------------------------------------------------------------------


def test_the_token_secret_is_optional_so_a_missing_secret_never_blocks_the_pod() -> None:
    spec = load_all(inject_documents(pod(GUARANTEED)))[0]["spec"]
    env = {e["name"]: e for e in sidecar_of(spec)["env"]}
    assert env["BLAST_LOGS_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is True


# --- QoS ----------------------------------------------------------------------------------------


def test_quantities_are_compared_by_value() -> None:
    assert quantity("2") == quantity("2000m") == quantity(2) == 2
    assert quantity("4Gi") == quantity("4096Mi") == 4 * 2**30
    assert quantity("1k") == quantity("1e3") == 1000
    assert quantity("0.5") == quantity(0.5) == Fraction(1, 2)
    assert quantity("${ELB_NUM_CPUS}") is None and quantity(True) is None and quantity("2 cores") is None


def test_a_guaranteed_pod_stays_guaranteed() -> None:
    """Every container, the sidecar included, has requests equal to its limits afterwards."""
    out = load_all(inject_documents(pod(GUARANTEED)))
    spec = out[0]["spec"]
    sidecar = sidecar_of(spec)
    assert sidecar["resources"]["requests"] == sidecar["resources"]["limits"] == {"cpu": "500m", "memory": "256Mi"}
    for c in spec["initContainers"] + spec["containers"]:
        limits, requests = c["resources"]["limits"], c["resources"]["requests"]
        assert quantity(limits["cpu"]) == quantity(requests["cpu"]), c["name"]
        assert quantity(limits["memory"]) == quantity(requests["memory"]), c["name"]
    validate(out)


def test_limits_without_requests_are_guaranteed_too() -> None:
    containers = "  - name: a\n    image: x\n    command: [sh]\n    resources:\n      limits: {cpu: 1, memory: 1Gi}\n"
    sidecar = sidecar_of(load_all(inject_documents(pod(containers)))[0]["spec"])
    assert sidecar["resources"]["requests"] == sidecar["resources"]["limits"]


@pytest.mark.parametrize("resources", [
    "    resources:\n      requests: {cpu: 1, memory: 1Gi}\n      limits: {cpu: 2, memory: 1Gi}\n",
    "    resources:\n      limits: {cpu: 1}\n",
    "",  # BestEffort: becomes Burstable, which Kubernetes evicts later than BestEffort
], ids=["burstable", "no-memory-limit", "best-effort"])
def test_other_pods_get_small_requests(resources: str) -> None:
    containers = "  - name: a\n    image: x\n    command: [sh]\n" + resources
    sidecar = sidecar_of(load_all(inject_documents(pod(containers)))[0]["spec"])
    assert sidecar["resources"] == {"requests": {"cpu": "50m", "memory": "64Mi"},
                                    "limits": {"cpu": "500m", "memory": "256Mi"}}


def test_an_init_container_counts_for_the_qos_class() -> None:
    init = "  initContainers:\n  - {name: i, image: x, command: [sh], resources: {requests: {cpu: 1, memory: 1Gi}}}\n"
    sidecar = sidecar_of(load_all(inject_documents(pod(GUARANTEED, init)))[0]["spec"])
    assert sidecar["resources"]["requests"] != sidecar["resources"]["limits"]


def test_placeholders_leave_the_class_open_and_qos_decides() -> None:
    containers = ("  - name: a\n    image: x\n    command: [sh]\n    resources:\n"
                  "      requests: {cpu: '${REQ}', memory: 1Gi}\n      limits: {cpu: '${LIM}', memory: 1Gi}\n")
    assert qos_class(load_all(pod(containers))[0]["spec"]["containers"]) == "unknown"
    warnings: list[str] = []
    sidecar = sidecar_of(load_all(inject_documents(pod(containers), InjectOptions(), warnings))[0]["spec"])
    assert sidecar["resources"]["requests"]["cpu"] == "50m"
    assert any("--qos guaranteed" in w for w in warnings)
    forced = inject_documents(pod(containers), InjectOptions(qos="guaranteed"))
    sidecar = sidecar_of(load_all(forced)[0]["spec"])
    assert sidecar["resources"]["requests"] == sidecar["resources"]["limits"]
    same = containers.replace("${LIM}", "${REQ}")  # the same placeholder renders the same
    assert qos_class(load_all(pod(same))[0]["spec"]["containers"]) == "guaranteed"
    proc = run_inject(["--qos", "burstable"], pod(GUARANTEED))
    assert proc.returncode == 0, proc.stderr
    assert sidecar_of(load_all(proc.stdout)[0]["spec"])["resources"]["requests"]["cpu"] == "50m"


# --- probes, metrics, termination grace ---------------------------------------------------------


def test_metrics_on_a_named_port_with_a_healthz_liveness_probe() -> None:
    sidecar = sidecar_of(load_all(inject_documents(pod(GUARANTEED)))[0]["spec"])
    assert sidecar["ports"] == [{"name": "metrics", "containerPort": 9090, "protocol": "TCP"}]
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    assert env["BLAST_LOGS_METRICS_HOST"] == "0.0.0.0" and env["BLAST_LOGS_METRICS_PORT"] == "9090"
    assert sidecar["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert sidecar["startupProbe"]["exec"]["command"] == ["test", "-x", LOGWRAP_PATH]
    moved = sidecar_of(load_all(inject_documents(pod(GUARANTEED), InjectOptions(metrics_port=9191)))[0]["spec"])
    assert moved["ports"][0]["containerPort"] == 9191
    assert {e["name"]: e.get("value") for e in moved["env"]}["BLAST_LOGS_METRICS_PORT"] == "9191"


def test_the_defaults_are_the_shippers() -> None:
    assert DEFAULT_METRICS_PORT == shipper_default("metrics_port")
    assert DEFAULT_GRACE_SECONDS == shipper_default("grace")


def test_termination_grace_is_set_from_the_drain_budget() -> None:
    spec = load_all(inject_documents(pod(GUARANTEED)))[0]["spec"]
    assert spec["terminationGracePeriodSeconds"] == 30  # BLAST_LOGS_GRACE 25 s + 5 s
    assert {e["name"]: e.get("value") for e in sidecar_of(spec)["env"]}["BLAST_LOGS_GRACE"] == "25"
    spec = load_all(inject_documents(pod(GUARANTEED), InjectOptions(grace_seconds=52.5)))[0]["spec"]
    assert spec["terminationGracePeriodSeconds"] == 58
    assert {e["name"]: e.get("value") for e in sidecar_of(spec)["env"]}["BLAST_LOGS_GRACE"] == "52.5"


def test_a_pods_own_termination_grace_is_kept_and_checked() -> None:
    long_enough = pod(GUARANTEED, "  terminationGracePeriodSeconds: 120\n")
    warnings: list[str] = []
    out = inject_documents(long_enough, InjectOptions(), warnings)
    assert load_all(out)[0]["spec"]["terminationGracePeriodSeconds"] == 120 and warnings == []
    short = pod(GUARANTEED, "  terminationGracePeriodSeconds: 10\n")
    out = inject_documents(short, InjectOptions(), warnings)
    assert load_all(out)[0]["spec"]["terminationGracePeriodSeconds"] == 10
    (warning,) = warnings
    assert "terminationGracePeriodSeconds 10" in warning and "raise it to 30" in warning
    proc = run_inject([], short)
    assert proc.returncode == 0 and "raise it to 30" in proc.stderr
    placeholder = pod(GUARANTEED, "  terminationGracePeriodSeconds: ${GRACE}\n")
    assert "terminationGracePeriodSeconds: ${GRACE}\n" in inject_documents(placeholder)


def test_an_old_injection_gets_the_termination_grace_and_twice_changes_nothing() -> None:
    text = pod(GUARANTEED)
    once = inject_documents(text)
    old = once.replace("  terminationGracePeriodSeconds: 30\n", "")
    assert old != once
    assert load_all(inject_documents(old)) == load_all(once)
    assert inject_documents(once) == once


@pytest.mark.parametrize("args, needle", [(["--metrics-port", "0"], "--metrics-port"),
                                          (["--grace", "-1"], "--grace"), (["--qos", "best"], "--qos")])
def test_bad_flag_values_are_usage_errors(args: list[str], needle: str) -> None:
    proc = run_inject(args, pod(GUARANTEED))
    assert proc.returncode == 2 and proc.stdout == "" and needle in proc.stderr


async def test_the_injected_sidecar_passes_its_probes_as_the_kubelet_runs_them(tmp_path: Path,
                                                                              recorder: Any) -> None:
    """The real shipper with the environment the injected spec gives it: logwrap is installed
    (startup probe), `/healthz` answers 200 on the named port (liveness), on every interface."""
    port = free_port()
    sidecar = sidecar_of(load_all(inject_documents(pod(GUARANTEED), InjectOptions(metrics_port=port)))[0]["spec"])
    downward = {"metadata.labels['elb-job-id']": "j1", "metadata.name": "p", "metadata.namespace": "default"}
    env: dict[str, str] = {}
    for e in sidecar["env"]:
        source = e.get("valueFrom", {})
        if "fieldRef" in source:
            env[e["name"]] = downward[source["fieldRef"]["fieldPath"]]
        elif "secretKeyRef" not in source:
            env[e["name"]] = e["value"]
    env["BLAST_LOGS_AGGREGATOR_URL"] = recorder.url
    volume = tmp_path / "vol"
    volume.mkdir()
    shipper = await start_shipper(volume, [recorder.url], **env)
    try:
        await shipper.started()
        command = [volume / "bin" / "logwrap" if a == LOGWRAP_PATH else a
                   for a in sidecar["startupProbe"]["exec"]["command"]]
        assert str(LOGWRAP_PATH).startswith(MOUNT_PATH)
        startup = await asyncio.to_thread(subprocess.run, [str(a) for a in command], timeout=10)
        assert startup.returncode == 0
        probe = sidecar["livenessProbe"]["httpGet"]
        (named,) = [p for p in sidecar["ports"] if p["name"] == probe["port"]]
        status, body = await asyncio.to_thread(_get, f"http://127.0.0.1:{named['containerPort']}{probe['path']}")
        assert status == 200 and json.loads(body)["status"]
        await eventually(lambda: _listens_on_all_interfaces(port), what="a listener on 0.0.0.0")
    finally:
        assert await shipper.stop() == 0


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status, r.read()


def _listens_on_all_interfaces(port: int) -> bool:
    """A TCP listener on 0.0.0.0:port (Linux /proc/net/tcp: local address, state 0A = LISTEN)."""
    wanted = f"00000000:{port:04X}"
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return any(r.split()[1] == wanted and r.split()[3] == "0A" for r in rows)


# --- containers that cannot be wrapped ----------------------------------------------------------


ARGS_ONLY = "  - name: entry\n    image: x\n    args: [--serve]\n  - name: b\n    image: x\n    command: [sh]\n"


@pytest.mark.parametrize("containers", [ARGS_ONLY, "  - {name: entry, image: x}\n",
                                        "  - {name: entry, image: x, command: 'sh -c true'}\n"],
                         ids=["args-only", "neither", "command-not-a-list"])
def test_a_container_that_cannot_be_wrapped_is_refused(containers: str, tmp_path: Path) -> None:
    text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n---\n" + pod(containers)
    with pytest.raises(InjectError, match=r"'entry'.*--skip-container entry"):
        inject_documents(text)
    path = tmp_path / "in.yaml"
    path.write_text(text)
    proc = run_inject(["-f", str(path)], "")
    assert proc.returncode == 1 and proc.stdout == ""
    assert "document 2 (Pod p): container 'entry'" in proc.stderr


def test_a_skipped_container_is_left_as_it_is_and_named() -> None:
    proc = run_inject(["--skip-container", "entry", "--skip-container", "nosuch"], pod(ARGS_ONLY))
    assert proc.returncode == 0, proc.stderr
    spec = load_all(proc.stdout)[0]["spec"]
    assert spec["containers"][0] == {"name": "entry", "image": "x", "args": ["--serve"]}
    assert spec["containers"][1]["command"] == [LOGWRAP_PATH, "b", "--", "sh"]
    assert "container 'entry' skipped" in proc.stderr
    assert "--skip-container nosuch: no container has this name" in proc.stderr
    validate(load_all(proc.stdout))


def test_inject_pod_spec_refuses_too() -> None:
    spec = {"containers": [{"name": "entry", "image": "x"}]}
    with pytest.raises(InjectError, match="no command"):
        inject_pod_spec(spec)
    out = inject_pod_spec(spec, options=InjectOptions(skip_containers=frozenset({"entry"})))
    assert out["containers"] == spec["containers"]


# --- kind: List and JSON ------------------------------------------------------------------------


def _as_list(docs: list[Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": docs}


def test_list_items_are_injected() -> None:
    fixture = render((FIXTURES[0].parent / "submit-and-janitor.yaml").read_text())
    docs = load_all(fixture)
    options = InjectOptions(skip_containers=NO_COMMAND)
    expected = load_all(inject_documents(fixture, options))
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    buf = io.StringIO()
    yaml.dump(_as_list(docs), buf)
    text = "# kubectl get jobs,cronjobs,configmaps -o yaml\n" + buf.getvalue()
    out = inject_documents(text, options)
    assert out.startswith("# kubectl get")
    got = load_all(out)[0]
    assert got["kind"] == "List" and got["items"] == expected
    assert inject_documents(out, options) == out
    validate([*got["items"]])
    with pytest.raises(InjectError, match=r"document 1 \(List\) items\[0\] \(Job submit-jobs\)"):
        inject_documents(text)


def test_json_answers_json() -> None:
    fixture = render((FIXTURES[0].parent / "blast-batch-job.yaml").read_text())
    (job,) = load_all(fixture)
    text = json.dumps(job, indent=4)
    proc = run_inject(["-f", "-"], text)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)  # JSON, not YAML
    assert out == load_all(inject_documents(fixture))[0]
    assert proc.stdout.startswith('{\n  "apiVersion"') and proc.stdout.endswith("}\n")
    assert inject_documents(proc.stdout) == proc.stdout
    listed = json.dumps(_as_list([job, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}]))
    got = json.loads(inject_documents(listed))
    assert got["items"][0] == out and got["items"][1]["kind"] == "ConfigMap"
    untouched = json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}})
    assert inject_documents(untouched) == untouched
    validate([out])


@pytest.mark.parametrize(("size_limit", "env_value"), [("1Gi", "1073741824"), ("256Mi", "268435456"),
                                                       ("${LOG_VOLUME}", None)])
def test_the_sidecar_knows_the_volume_limit_it_must_warn_before(size_limit: str, env_value: str | None) -> None:
    """The shipper's /healthz says degraded past 80% of BLAST_LOGS_VOLUME_LIMIT_BYTES: inject sets it
    from the emptyDir's sizeLimit (the kubelet evicts past it), and leaves it out for a placeholder."""
    spec = {"containers": [{"name": "blast", "image": "ncbi/elb", "command": ["blastn"]}]}
    out = inject_pod_spec(spec, options=InjectOptions(volume_size_limit=size_limit))
    env = {e["name"]: e.get("value") for e in sidecar_of(out)["env"]}
    assert env.get("BLAST_LOGS_VOLUME_LIMIT_BYTES") == env_value
    (volume,) = [v for v in out["volumes"] if "emptyDir" in v]
    assert volume["emptyDir"]["sizeLimit"] == size_limit
