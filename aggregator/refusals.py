"""Requests refused for their token (401/403): one log line naming the job and pod, and the
`rejected_tokens` metric, so that a job whose pods cannot ship (a rotated secret, a wrong Secret)
is visible. Everything named is checked first: a job id or a pod name, never header text.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Final

from aggregator.auth import bearer_token
from aggregator.body import json_object
from aggregator.errors import HTTP_ANSWERS, AggregatorError, AuthError, Forbidden, Unauthorized
from aggregator.metrics import Metrics
from blastlogs.protocol import valid_job_id, valid_k8s_name

log = logging.getLogger("aggregator.auth")


@dataclass(frozen=True)
class Refusal:
    """One refused request, every field already sanitised (None: unknown or not valid)."""

    status: int
    #: invalid_token, malformed, admin_token (on ingest), job_token (on finalize), wrong_job
    reason: str
    #: the job id the token names (the part before its last `.`): what it claims, not proof
    token_job: str | None
    #: the job the request is about: the batch's, or the finalize URL's
    job: str | None = None
    pod: str | None = None

    def fields(self) -> dict[str, object]:
        out: dict[str, object] = {"status": self.status, "reason": self.reason, "token_job": self.token_job}
        if self.job is not None:
            out["job_id"] = self.job
        if self.pod is not None:
            out["pod"] = self.pod
        return out


def token_named_job(header: str | None) -> str | None:
    """The job id a bearer token names when it is a valid job id; None otherwise. Never raises."""
    try:
        token = bearer_token(header)
    except AuthError:
        return None
    return _job(token.rpartition(".")[0])


def refusal_of(error: AuthError, header: str | None, *, finalize: bool, job: str | None = None,
               pod: str | None = None) -> Refusal:
    """What `check_ingest` / `check_admin` refused, as a Refusal."""
    if isinstance(error, Forbidden):
        reason = "job_token" if finalize else "admin_token"
    else:
        try:
            bearer_token(header)
            reason = "invalid_token"
        except Unauthorized:
            reason = "malformed"
    # A finalize URL's job id is a path the client typed, which may hold a secret sent in the wrong
    # place: like the request log, it is named only once the token held (403). A batch's job id
    # (ingest) is named when valid and not shaped like a token.
    verified = isinstance(error, Forbidden)
    named = _job(job) if verified or not finalize else None
    return Refusal(HTTP_ANSWERS[Forbidden if verified else Unauthorized][0], reason,
                   token_named_job(header), named, _pod(pod))


def batch_identity(body: bytes) -> tuple[str | None, str | None]:
    """The job id and pod a batch body names, when they are valid; (None, None) for anything else."""
    try:
        obj = json_object(body)
    except AggregatorError:
        return None, None
    return _job(obj.get("job_id")), _pod(obj.get("pod"))


def report(metrics: Metrics, refusal: Refusal) -> None:
    """Count and log one refusal: the metric's `job_id` is the job the token names, else the request's."""
    metrics.reject_token(refusal.token_job or refusal.job, refusal.reason)
    log.warning("token refused", extra={"fields": refusal.fields()})


#: A token's MAC: 43 base64url characters (32 bytes, no padding) as one `.`-separated segment.
_MAC_SEGMENT: Final = re.compile(r"(?:^|\.)[A-Za-z0-9_-]{43}(?:\.|$)")


def _job(value: object) -> str | None:
    """A job id fit for a log line and a label: valid, and holding nothing shaped like a token's MAC
    (a client may send a token where a job id goes, in the path, the body or before another `.`)."""
    if not isinstance(value, str) or not valid_job_id(value) or _MAC_SEGMENT.search(value):
        return None
    return value


def _pod(value: object) -> str | None:
    return value if isinstance(value, str) and valid_k8s_name(value) else None
