"""The Secret that holds one job's token, for the job API: many jobs can share a namespace, each
pod reading its own job's token, and Kubernetes deletes the Secret with its Job.

Pure: `job_secret(...)` returns the manifest as a dict for the job API's Kubernetes client to
create; nothing here logs, and no error message repeats the token.

The job API's steps (README, "Per-job tokens"): create the Job suspended (`spec.suspend: true`),
create this Secret with the Job's uid as its owner, then resume the Job. The pods start only once
the Secret exists, and the garbage collector removes the Secret when the Job is deleted (its TTL
included). The RBAC for it: manifests/job-api/.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Final

from blastlogs.protocol import valid_job_id

#: Secret names start with this; `inject --token-secret` names the same Secret (see secret_name).
SECRET_PREFIX: Final = "blast-logs-token-"
#: The key the sidecar reads (`inject --token-key`, default `token`).
TOKEN_KEY: Final = "token"
#: The job id label ElasticBLAST puts on a job's pods; also set on the Secret when the id is a valid
#: label value, so `kubectl get secrets -l elb-job-id=...` finds it.
JOB_ID_LABEL: Final = "elb-job-id"
_DNS_LABEL_RE: Final = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN_RE: Final = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_VALUE_RE: Final = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")
_UID_RE: Final = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def secret_name(job_id: str) -> str:
    """The Secret's name for a job: `blast-logs-token-<job id>` when the job id is already a DNS
    label (lowercase letters, digits, `-`), else the id made one plus 8 hex digits of its SHA-256,
    so that ids differing only in case, `_` or `.` never share a Secret. At most 162 characters
    (a Secret name may have 253)."""
    if not valid_job_id(job_id):
        raise ValueError(f"{job_id!r} is not a job id ([A-Za-z0-9][A-Za-z0-9._-]{{0,127}})")
    if _DNS_LABEL_RE.fullmatch(job_id):
        return SECRET_PREFIX + job_id
    readable = re.sub(r"[^a-z0-9-]+", "-", job_id.lower()).strip("-")
    digest = hashlib.sha256(job_id.encode()).hexdigest()[:8]
    return SECRET_PREFIX + "-".join(p for p in (readable, digest) if p)


def job_secret(job_id: str, token: str, *, job_name: str, job_uid: str, namespace: str | None = None,
               key: str = TOKEN_KEY) -> dict[str, Any]:
    """The Secret manifest holding `token` (the job's, `aggregator.auth.job_token`) under `key`,
    owned by the Job `job_name` (uid `job_uid`, same namespace) so that it is deleted with it.

    Raises ValueError for an invalid job id, Job name or uid, or a token that is not this job's
    (the message never holds the token).
    """
    name = secret_name(job_id)
    if not (len(job_name) <= 253 and _DNS_SUBDOMAIN_RE.fullmatch(job_name)):
        raise ValueError(f"{job_name!r} is not a Job name (a DNS subdomain)")
    if not _UID_RE.fullmatch(job_uid):
        raise ValueError(f"{job_uid!r} is not a Kubernetes uid (the created Job's metadata.uid)")
    if token.rpartition(".")[0] != job_id:
        raise ValueError(f"the token given is not job {job_id!r}'s (a job token is `<job id>.<mac>`)")
    if not (len(key) <= 253 and re.fullmatch(r"[-._a-zA-Z0-9]+", key)):
        raise ValueError(f"{key!r} is not a Secret key")
    labels = {"app.kubernetes.io/name": "blast-logs", "app.kubernetes.io/component": "job-token"}
    if len(job_id) <= 63 and _LABEL_VALUE_RE.fullmatch(job_id):
        labels[JOB_ID_LABEL] = job_id
    metadata: dict[str, Any] = {"name": name}
    if namespace is not None:
        if not (len(namespace) <= 63 and _DNS_LABEL_RE.fullmatch(namespace)):
            raise ValueError(f"{namespace!r} is not a namespace name")
        metadata["namespace"] = namespace
    metadata["labels"] = labels
    # Not blockOwnerDeletion: setting it needs `update` on jobs/finalizers, which the job API need not
    # hold; the Secret is still deleted (in the background) once the Job is.
    metadata["ownerReferences"] = [{"apiVersion": "batch/v1", "kind": "Job", "name": job_name, "uid": job_uid}]
    return {"apiVersion": "v1", "kind": "Secret", "metadata": metadata, "type": "Opaque", "immutable": True,
            "stringData": {key: token}}
