"""Least privilege in the manifests and images: storage by workload identity only, the sidecar with its
token alone, non-root read-only containers, a network policy admitting only job pods and the job API.

Named in docs/security.md next to the threats they answer; tests/deploy/test_deploy_checks.py runs
the deployment tools over the same files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from k8s_templates import load_all
from paths import ROOT

MANIFESTS = ROOT / "manifests"


def _docs(path: Path) -> list[dict[str, Any]]:
    return load_all(path.read_text())


def _base() -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for p in sorted((MANIFESTS / "base").glob("*.yaml")) if p.name != "kustomization.yaml"
            for d in _docs(p)}


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


STORAGE_KEY_MARKERS = ("AccountKey", "SharedAccessSignature", "sig=", "CONNECTION_STRING", "SAS", "ACCOUNT_KEY")


def test_aggregator_reaches_storage_by_workload_identity_only() -> None:
    base = _base()
    pod = base["Deployment"]["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    env = _env(container)
    assert env["BLAST_LOGS_STORE"]["value"] == "azure://blast-logs"
    assert env["BLAST_LOGS_AZURE_ACCOUNT_URL"]["value"].startswith("https://")
    assert not any(m in name for name in env for m in STORAGE_KEY_MARKERS), sorted(env)
    assert pod["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    sa = base["ServiceAccount"]
    assert pod["spec"]["serviceAccountName"] == sa["metadata"]["name"]
    assert sa["metadata"]["annotations"]["azure.workload.identity/client-id"]
    assert sa.get("automountServiceAccountToken") is False  # no Kubernetes API access either
    # Secrets come by reference only; no Secret object with a value is shipped.
    for name in ("BLAST_LOGS_SECRET", "BLAST_LOGS_ADMIN_TOKEN"):
        assert set(env[name]) == {"name", "valueFrom"} and "secretKeyRef" in env[name]["valueFrom"]
    assert "Secret" not in base
    text = "\n".join(p.read_text() for p in MANIFESTS.rglob("*.yaml"))
    assert not any(m in text for m in ("AccountKey=", "SharedAccessSignature=", "sig=")), "a storage key in the manifests"


def _shipper_container() -> tuple[dict[str, Any], dict[str, Any]]:
    job = _docs(MANIFESTS / "examples" / "blast-job.yaml")[0]
    spec = job["spec"]["template"]["spec"]
    (sidecar,) = [c for c in spec["initContainers"] if c["name"] == "blast-logs-shipper"]
    return spec, sidecar


def test_the_injected_shipper_has_no_storage_access_and_only_its_token() -> None:
    _spec, sidecar = _shipper_container()
    env = _env(sidecar)
    assert not any(m in name for name in env for m in (*STORAGE_KEY_MARKERS, "AZURE", "STORE")), sorted(env)
    assert env["BLAST_LOGS_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "blast-logs-token", "key": "token",
                                                                    "optional": True}
    assert "value" not in env["BLAST_LOGS_TOKEN"]
    # Only the shared log volume is mounted: no storage credentials, no service account token volume.
    assert [m["name"] for m in sidecar["volumeMounts"]] == ["blast-logs"]
    assert sidecar.get("envFrom") is None
    assert sidecar["restartPolicy"] == "Always"


def _hardened(ctx: dict[str, Any], pod_ctx: dict[str, Any] | None = None) -> None:
    merged = {**(pod_ctx or {}), **ctx}
    assert merged.get("runAsNonRoot") is True
    assert int(merged.get("runAsUser", 0)) != 0
    assert ctx.get("readOnlyRootFilesystem") is True
    assert ctx.get("allowPrivilegeEscalation") is False
    assert ctx.get("capabilities", {}).get("drop") == ["ALL"]
    assert not ctx.get("privileged", False)
    assert merged.get("seccompProfile", {}).get("type") == "RuntimeDefault"


def test_both_programs_run_non_root_with_read_only_root_filesystems() -> None:
    pod = _base()["Deployment"]["spec"]["template"]["spec"]
    (aggregator,) = pod["containers"]
    _hardened(aggregator["securityContext"], pod.get("securityContext"))
    _, sidecar = _shipper_container()
    _hardened(sidecar["securityContext"])
    # The images agree: a numeric non-root USER.
    for dockerfile in ("Dockerfile.aggregator", "Dockerfile.shipper"):
        users = [ln.split()[1] for ln in (ROOT / dockerfile).read_text().splitlines() if ln.startswith("USER ")]
        assert users and users[-1].split(":")[0].isdigit() and users[-1].split(":")[0] != "0", (dockerfile, users)


def test_network_policy_admits_only_job_pods_and_the_job_api() -> None:
    base = _base()
    policy = base["NetworkPolicy"]["spec"]
    aggregator_labels = base["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert all(aggregator_labels.get(k) == v for k, v in policy["podSelector"]["matchLabels"].items())
    assert policy["policyTypes"] == ["Ingress"]
    (rule,) = policy["ingress"]
    assert [p["port"] for p in rule["ports"]] == ["http"]
    peers = rule["from"]
    assert len(peers) == 2
    assert {"key": "elb-job-id", "operator": "Exists"} in peers[0]["podSelector"]["matchExpressions"]
    for peer in peers:
        assert "ipBlock" not in peer
        selector = peer["podSelector"]
        assert selector, "an empty podSelector would admit every pod"
    job_pods = [p for p in peers if p["podSelector"].get("matchExpressions")]
    assert job_pods[0]["podSelector"]["matchExpressions"] == [{"key": "elb-job-id", "operator": "Exists"}]
    job_api = [p for p in peers if p["podSelector"].get("matchLabels")]
    assert job_api[0]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "elastic-blast-job-api"}
    # The example job's pods carry the label the policy admits.
    job = _docs(MANIFESTS / "examples" / "blast-job.yaml")[0]
    assert "elb-job-id" in job["spec"]["template"]["metadata"]["labels"]
