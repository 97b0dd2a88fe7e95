"""Job tokens (HMAC-SHA256 of the job id under the server secret) and the admin token, checked in constant time."""

from __future__ import annotations

import base64
import hashlib
import hmac

from aggregator.errors import Forbidden, Unauthorized


def _mac(secret: str, job_id: str) -> str:
    digest = hmac.new(secret.encode(), ("ingest:" + job_id).encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def job_token(secret: str, job_id: str) -> str:
    """The token a job's pods send: `job_id + "." + base64url-no-padding(HMAC(secret, "ingest:" + job_id))`."""
    return f"{job_id}.{_mac(secret, job_id)}"


def _same(a: str, b: str) -> bool:
    # Bytes, so a non-ASCII header cannot make compare_digest raise.
    return hmac.compare_digest(a.encode("utf-8", "surrogateescape"), b.encode("utf-8", "surrogateescape"))


def token_job_id(secret: str, token: str) -> str | None:
    """The job id a token names when its MAC holds, else None. The id is the part before the last `.`."""
    job_id, dot, mac = token.rpartition(".")
    if not dot or not job_id or not mac:
        return None
    return job_id if _same(mac, _mac(secret, job_id)) else None


def bearer_token(header: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header; Unauthorized when absent or malformed."""
    if not header:
        raise Unauthorized("missing Authorization: Bearer <token>")
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise Unauthorized("malformed Authorization header, expected Bearer <token>")
    return token


def check_ingest(header: str | None, secret: str, admin_token: str) -> str:
    """The job id an ingest request may write to, from its job token."""
    token = bearer_token(header)
    if _same(token, admin_token):
        raise Forbidden("the admin token cannot ingest; use the job's token")
    job_id = token_job_id(secret, token)
    if job_id is None:
        raise Unauthorized("invalid job token")
    return job_id


def check_admin(header: str | None, secret: str, admin_token: str) -> None:
    """Pass for the admin token; Forbidden for a (valid) job token, Unauthorized for anything else."""
    token = bearer_token(header)
    if _same(token, admin_token):
        return
    if token_job_id(secret, token) is not None:
        raise Forbidden("a job token cannot finalize; use the admin token")
    raise Unauthorized("invalid admin token")
