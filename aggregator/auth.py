"""Job tokens and read tokens (HMAC-SHA256 of a purpose and the job id under the server secret) and the
admin token, checked in constant time. The purpose (`ingest:` or `read:`) in the MAC keeps one kind from
ever passing for the other."""

from __future__ import annotations

import base64
import hashlib
import hmac

from aggregator.errors import Forbidden, Unauthorized

INGEST = "ingest:"
READ = "read:"


def _mac(secret: str, job_id: str, purpose: str = INGEST) -> str:
    digest = hmac.new(secret.encode(), (purpose + job_id).encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def job_token(secret: str, job_id: str) -> str:
    """The token a job's pods send: `job_id + "." + base64url-no-padding(HMAC(secret, "ingest:" + job_id))`."""
    return f"{job_id}.{_mac(secret, job_id)}"


def read_token(secret: str, job_id: str) -> str:
    """A token that reads one job's logs: `job_id + "." + base64url-no-padding(HMAC(secret, "read:" + job_id))`."""
    return f"{job_id}.{_mac(secret, job_id, READ)}"


def _same(a: str, b: str) -> bool:
    # Bytes, so a non-ASCII header cannot make compare_digest raise.
    return hmac.compare_digest(a.encode("utf-8", "surrogateescape"), b.encode("utf-8", "surrogateescape"))


def token_job_id(secret: str, token: str, purpose: str = INGEST) -> str | None:
    """The job id a token of `purpose` names when its MAC holds, else None. The id is the part before the
    last `.`."""
    job_id, dot, mac = token.rpartition(".")
    if not dot or not job_id or not mac:
        return None
    return job_id if _same(mac, _mac(secret, job_id, purpose)) else None


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
        if token_job_id(secret, token, READ) is not None:
            raise Forbidden("a read token cannot ingest; use the job's token")
        raise Unauthorized("invalid job token")
    return job_id


def check_admin(header: str | None, secret: str, admin_token: str) -> None:
    """Pass for the admin token; Forbidden for a (valid) job token, Unauthorized for anything else."""
    token = bearer_token(header)
    if _same(token, admin_token):
        return
    if token_job_id(secret, token) is not None or token_job_id(secret, token, READ) is not None:
        raise Forbidden("a job or read token cannot finalize; use the admin token")
    raise Unauthorized("invalid admin token")


def check_read(header: str | None, secret: str, admin_token: str, job_id: str) -> None:
    """Pass for the admin token or the job's read token; Forbidden for a valid token of the wrong kind (a
    job token) or of another job, Unauthorized for anything else."""
    token = bearer_token(header)
    if _same(token, admin_token):
        return
    reads = token_job_id(secret, token, READ)
    if reads is not None:
        if reads != job_id:
            raise Forbidden("this read token is for another job")
        return
    if token_job_id(secret, token) is not None:
        raise Forbidden("a job (ingest) token cannot read; use the job's read token")
    raise Unauthorized("invalid read token")
