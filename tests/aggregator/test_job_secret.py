"""Per-job token Secrets (issue 17): the manifest the job API creates for each job, its name rules,
its owner (the Job), the RBAC in manifests/job-api, and inject naming the same Secret."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess

import kubernetes_validate
import pytest
from conftest import TEST_SECRET
from k8s_templates import K8S_VERSIONS, ROOT, load_all, render

from aggregator.auth import job_token
from aggregator.job_secret import SECRET_PREFIX, job_secret, secret_name
from blastlogs_tools.inject import InjectOptions, inject_documents

UID = "6f1c2d3e-4a5b-4c6d-8e9f-0a1b2c3d4e5f"
JOB_API = ROOT / "manifests" / "job-api"
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def secret_for(job_id: str, **kw: str) -> dict[str, object]:
    return job_secret(job_id, job_token(TEST_SECRET, job_id), job_name="blast-job", job_uid=UID, **kw)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_the_secret_is_valid_kubernetes(version: str) -> None:
    for job_id in ("elb-8a3c1f", "ELB_Job.7", "x" * 128):
        kubernetes_validate.validate(secret_for(job_id, namespace="blast-jobs"), version, strict=True)


def test_the_secret_holds_the_token_and_is_owned_by_the_job() -> None:
    token = job_token(TEST_SECRET, "elb-8a3c1f")
    secret = job_secret("elb-8a3c1f", token, job_name="blastn-batch-core-nt-job-7", job_uid=UID,
                        namespace="blast-jobs")
    assert secret["stringData"] == {"token": token}
    assert secret["type"] == "Opaque" and secret["immutable"] is True
    meta = secret["metadata"]
    assert meta["name"] == "blast-logs-token-elb-8a3c1f" and meta["namespace"] == "blast-jobs"
    assert meta["labels"]["elb-job-id"] == "elb-8a3c1f"
    (owner,) = meta["ownerReferences"]
    assert owner == {"apiVersion": "batch/v1", "kind": "Job", "name": "blastn-batch-core-nt-job-7", "uid": UID}
    assert "blockOwnerDeletion" not in owner  # would need update on jobs/finalizers
    assert job_secret("elb-8a3c1f", token, job_name="j", job_uid=UID, key="jt")["stringData"] == {"jt": token}


@pytest.mark.parametrize("job_id", ["elb-8a3c1f", "ELB-1", "elb_1", "elb.1", "a", "9", "job-", "Z_",
                                    "x" * 128, "A" * 128, "a.b_c-D"])
def test_names_are_dns_names_and_distinct(job_id: str) -> None:
    name = secret_name(job_id)
    assert name.startswith(SECRET_PREFIX) and len(name) <= 253 and DNS_SUBDOMAIN.fullmatch(name), name
    assert "." not in name  # a DNS label after the prefix: safe wherever a name goes


def test_ids_that_look_alike_get_different_secrets() -> None:
    ids = ["elb-1", "ELB-1", "elb_1", "elb.1", "Elb-1", "elb-1-"]
    names = [secret_name(i) for i in ids]
    assert len(set(names)) == len(ids), names
    assert secret_name("elb-1") == "blast-logs-token-elb-1"  # readable when the id allows it
    assert secret_name("ELB_1").startswith("blast-logs-token-elb-1-")


@pytest.mark.parametrize("kwargs, needle", [
    ({"job_id": "../etc"}, "not a job id"),
    ({"job_name": "Not_A_Name"}, "not a Job name"),
    ({"job_uid": "1234"}, "not a Kubernetes uid"),
    ({"token": "elb-2.bWFj"}, "not job 'elb-1'"),
    ({"namespace": "Bad NS"}, "not a namespace"),
    ({"key": "no spaces"}, "not a Secret key"),
])
def test_bad_inputs_are_refused_without_repeating_the_token(kwargs: dict[str, str], needle: str) -> None:
    args = {"job_id": "elb-1", "token": job_token(TEST_SECRET, "elb-1"), "job_name": "j", "job_uid": UID} | kwargs
    job_id, token = args.pop("job_id"), args.pop("token")
    with pytest.raises(ValueError, match=needle) as err:
        job_secret(job_id, token, **args)
    assert token.rpartition(".")[2] not in str(err.value)


def test_nothing_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret_for("elb-1")
    with pytest.raises(ValueError):
        job_secret("elb-1", "elb-2.x", job_name="j", job_uid=UID)
    assert caplog.records == []


def test_inject_names_the_jobs_secret() -> None:
    """`inject --token-secret 'blast-logs-token-${ELB_JOB_ID}'`, rendered, reads the Secret the
    helper makes for that job (for job ids that are DNS labels; others render `secret_name`)."""
    fixture = (ROOT / "tests" / "fixtures" / "k8s" / "blast-batch-job.yaml").read_text()
    out = render(inject_documents(fixture, InjectOptions(token_secret=SECRET_PREFIX + "${ELB_JOB_ID}")))
    (job,) = load_all(out)
    (sidecar,) = [c for c in job["spec"]["template"]["spec"]["initContainers"] if c["name"] == "blast-logs-shipper"]
    ref = next(e for e in sidecar["env"] if e["name"] == "BLAST_LOGS_TOKEN")["valueFrom"]["secretKeyRef"]
    job_id = job["spec"]["template"]["metadata"]["labels"]["elb-job-id"]
    secret = secret_for(job_id)
    assert ref["name"] == secret["metadata"]["name"]  # type: ignore[index]
    assert ref["key"] in secret["stringData"]  # type: ignore[operator]
    assert ref["optional"] is True


def test_the_job_api_role_grants_only_secrets() -> None:
    docs = {d["kind"]: d for p in sorted(JOB_API.glob("*.yaml")) if p.name != "kustomization.yaml"
            for d in load_all(p.read_text())}
    assert set(docs) == {"Role", "RoleBinding"}
    (rule,) = docs["Role"]["rules"]
    assert rule == {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create", "get", "delete"]}
    binding = docs["RoleBinding"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": docs["Role"]["metadata"]["name"]}
    assert binding["subjects"][0]["kind"] == "ServiceAccount"
    for version in K8S_VERSIONS:
        for doc in docs.values():
            kubernetes_validate.validate(doc, version, strict=True)


def test_the_job_api_kustomization_builds() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    proc = subprocess.run([kubectl, "kustomize", str(JOB_API)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert sorted(d["kind"] for d in load_all(proc.stdout)) == ["Role", "RoleBinding"]


def test_the_readme_walks_through_per_job_tokens() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Per-job tokens"):]
    section = section[: section.index("\n## ")]
    for needle in ("job_secret(", "suspend", "manifests/job-api", "--token-secret", "ownerReferences"):
        assert needle in section, needle
