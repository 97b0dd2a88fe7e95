"""Deployment files pass their tools: kubernetes-validate, kubectl kustomize, hadolint, docker-compose."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from k8s_templates import FIXTURES, K8S_VERSIONS, NO_COMMAND, load_all, render
from paths import ROOT

from blastlogs_tools.inject import InjectOptions, inject_documents

VENV_BIN = Path(sys.executable).parent
MANIFESTS = ROOT / "manifests"
BASE_RESOURCES = sorted(p for p in (MANIFESTS / "base").glob("*.yaml") if p.name != "kustomization.yaml")
EXAMPLE_JOB = MANIFESTS / "examples" / "blast-job.yaml"
EXAMPLE_HEADER = """\
# An ElasticBLAST batch Job (rendered from tests/fixtures/k8s/blast-batch-job.yaml) with the
# blast-logs sidecar injected by `blast-log-shipper inject`. The job API creates the Secret
# blast-logs-token (key `token`: `blast-log-aggregator token <job id>`) in the job's namespace.
# Regenerate with:
#   python -c 'import sys; sys.path[:0] = ["tests", "tests/deploy"]; import test_deploy_checks as t; t.write_example()'
"""
DOCKERFILES = ("Dockerfile.shipper", "Dockerfile.aggregator", "Dockerfile.blast")


def tool(name: str) -> str:
    path = VENV_BIN / name
    found = str(path) if path.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (scripts/bootstrap.sh installs it)")
    return found


def run(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=timeout)


def example_text() -> str:
    fixture = (ROOT / "tests" / "fixtures" / "k8s" / "blast-batch-job.yaml").read_text()
    return EXAMPLE_HEADER + inject_documents(render(fixture))


def write_example() -> None:
    EXAMPLE_JOB.write_text(example_text())


def test_example_job_is_what_inject_makes() -> None:
    assert EXAMPLE_JOB.read_text() == example_text(), "regenerate it: see the command in its header"
    spec = load_all(EXAMPLE_JOB.read_text())[0]["spec"]["template"]["spec"]
    assert spec["initContainers"][0]["name"] == "blast-logs-shipper"


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_and_injected_fixtures_pass_kubernetes_validate(version: str, tmp_path: Path) -> None:
    rendered = []
    for fixture in FIXTURES:
        out = tmp_path / fixture.name
        out.write_text(render(inject_documents(fixture.read_text(), InjectOptions(skip_containers=NO_COMMAND))))
        rendered.append(str(out))
    files = [str(p) for p in BASE_RESOURCES] + [str(EXAMPLE_JOB), *rendered]
    proc = run([tool("kubernetes-validate"), "-k", version, "--strict", "--quiet", *files])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_kustomize_base_builds_and_validates(tmp_path: Path) -> None:
    kubectl = tool("kubectl")
    proc = run([kubectl, "kustomize", str(MANIFESTS / "base")])
    assert proc.returncode == 0, proc.stderr
    built = load_all(proc.stdout)
    kinds = sorted(d["kind"] for d in built)
    assert kinds == ["ConfigMap", "Deployment", "NetworkPolicy", "PodDisruptionBudget", "Service", "ServiceAccount"]
    out = tmp_path / "built.yaml"
    out.write_text(proc.stdout)
    for version in K8S_VERSIONS:
        check = run([tool("kubernetes-validate"), "-k", version, "--strict", "--quiet", str(out)])
        assert check.returncode == 0, check.stdout + check.stderr


def test_aggregator_deployment_runs_two_probed_replicas_behind_port_8080() -> None:
    # Its security (workload identity, secrets by reference, hardening, the network policy) is
    # tests/deploy/test_manifest_security.py's.
    docs = {d["kind"]: d for p in BASE_RESOURCES for d in load_all(p.read_text())}
    deployment = docs["Deployment"]
    pod = deployment["spec"]["template"]
    assert deployment["spec"]["replicas"] == 2
    container = pod["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/tmp"}  # the root filesystem is read-only
    assert docs["Service"]["spec"]["ports"][0]["port"] == 8080


def test_phase_table_config_map_is_what_the_aggregator_reads(tmp_path: Path) -> None:
    from aggregator.config import load_phase_table
    from blastlogs.protocol import DEFAULT_PHASE_TABLE

    config_map = load_all((MANIFESTS / "base" / "configmap.yaml").read_text())[0]
    path = tmp_path / "phase-table.json"
    path.write_text(config_map["data"]["phase-table.json"])
    assert load_phase_table(str(path)) == DEFAULT_PHASE_TABLE


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfiles_pass_hadolint(dockerfile: str) -> None:
    proc = run([tool("hadolint"), dockerfile])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfiles_keep_azure_out_of_the_shipper() -> None:
    shipper = (ROOT / "Dockerfile.shipper").read_text()
    aggregator = (ROOT / "Dockerfile.aggregator").read_text()
    assert "blast-logs==" in shipper and "[azure]" not in shipper.split("FROM python-base AS build")[1]
    assert "blast-logs[aggregator]==" in aggregator
    for text in (shipper, aggregator):
        assert "ARG BASE_IMAGE=python:3.11-slim-bookworm\n" in text and "FROM ${BASE_IMAGE}" in text
        assert "--no-index --find-links /wheelhouse" in text
        assert "USER 10001:10001" in text.split("FROM python-base\n")[-1]


def test_docker_compose_config_is_valid() -> None:
    proc = run([tool("docker-compose"), "-f", "docker-compose.yml", "config", "-q"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    services = load_all(run([tool("docker-compose"), "-f", "docker-compose.yml", "config"]).stdout)[0]["services"]
    assert {"azurite", "aggregator-1", "aggregator-2", "shipper", "blast", "check"} <= set(services)
    assert not any("links" in s for s in services.values())
