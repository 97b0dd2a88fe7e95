"""The aggregator's OpenAPI 3.1 document, served at `GET /openapi.json`.

Built from `blastlogs.protocol` and the running configuration rather than written by hand, so the id
patterns and limits it states are the very ones the handlers enforce; tests/aggregator/test_openapi.py checks it
against the router and against `parse_batch` on generated bodies.
"""

from __future__ import annotations

import re
from typing import Any, Final

from aggregator.config import AggregatorConfig
from aggregator.errors import (
    RETRY_AFTER_STATUSES,
    BadRequest,
    BodyTimeout,
    Draining,
    Forbidden,
    JobNotFound,
    LockBusy,
    StoreError,
    TooBusy,
    TooLarge,
    Unauthorized,
    statuses,
)
from blastlogs.protocol import (
    FINALIZE_PATH,
    INGEST_PATH,
    JOB_ID_BAD_END,
    JOB_ID_RE,
    K8S_NAME_MAX,
    K8S_NAME_RE,
    PHASE_RE,
    cut_marker,
)

OPENAPI_PATH: Final = "/openapi.json"
OPENAPI_VERSION: Final = "3.1.0"
API_VERSION: Final = "1"

#: Statuses each route may answer besides its success (from what it raises, through `HTTP_ANSWERS`);
#: every one carries the Error body.
INGEST_ERRORS: Final = statuses((BadRequest, Unauthorized, Forbidden, BodyTimeout, TooLarge, TooBusy, StoreError))
FINALIZE_ERRORS: Final = statuses((BadRequest, Unauthorized, Forbidden, JobNotFound, BodyTimeout, TooLarge,
                                   StoreError, LockBusy))
READYZ_ERRORS: Final = statuses((Draining, StoreError))
READ_ERRORS: Final = statuses((BadRequest, Unauthorized, Forbidden, JobNotFound, StoreError))
VIEW_ERRORS: Final = statuses((BadRequest,))
#: The read routes (aggregator/logs_api.py); kept here as plain strings so this module imports no handler.
LOGS_PATH: Final = "/v1/jobs/{job_id}/logs"
STREAMS_PATH: Final = "/v1/jobs/{job_id}/streams"
VIEW_PATH: Final = "/v1/jobs/{job_id}/view"
#: What each status means, for people reading the document.
_ERROR_TEXT: Final = {
    400: "Malformed request: not a valid batch, bad JSON or gzip, an unsupported Content-Encoding.",
    401: "No token, a malformed Authorization header, or a token whose MAC does not hold.",
    403: "A valid token of the wrong kind (admin on ingest; job or read token on finalize; job token on a "
         "read route; read token on ingest) or for another job.",
    404: "Nothing is stored for this job.",
    408: "The request body did not arrive in time; the connection is closed.",
    413: "The body (after inflating gzip) exceeds the size limit.",
    429: "Too many ingests in flight; retry after `Retry-After` seconds.",
    503: "Storage is unavailable, or another finalize of the job holds its lock; retry after `Retry-After`.",
}


def anchored(pattern: str) -> str:
    """A whole-string pattern: JSON Schema's `pattern` matches anywhere unless anchored."""
    return f"^{pattern}$"


#: The job id's restriction beyond its pattern (`valid_job_id`), as a schema it must not match.
JOB_ID_NOT: Final = {"pattern": re.escape(JOB_ID_BAD_END) + "$"}


def _k8s_name(what: str) -> dict[str, Any]:
    return {"type": "string", "pattern": anchored(K8S_NAME_RE.pattern), "maxLength": K8S_NAME_MAX,
            "description": f"The {what}: a Kubernetes name."}


def _nonneg(description: str) -> dict[str, Any]:
    return {"type": "integer", "minimum": 0, "description": description}


def _schemas(config: AggregatorConfig) -> dict[str, Any]:
    job_id = {"type": "string", "pattern": anchored(JOB_ID_RE.pattern), "not": JOB_ID_NOT,
              "description": "The job id (the pod label `elb-job-id`); not ending with `.` (a storage path "
                             "segment that Azure may trim)."}
    event = {
        "type": "object",
        "required": ["off", "ts", "line"],
        "properties": {
            "off": _nonneg("The stream's byte position of this line; `(stream, off)` identifies the event."),
            "ts": {"type": "number", "description": "When the shipper first read the line (Unix seconds)."},
            "line": {"type": "string",
                     "description": f"The sanitised line. Longer than {config.max_line_chars} characters, it "
                                    f"is cut and ends with `{cut_marker(0).replace('0', 'N')}` (never refused)."},
        },
    }
    dropped = {
        "type": ["object", "null"],
        "description": "What the shipper deliberately left out just before this batch; `off` is required "
                       "when `lines` > 0.",
        "properties": {
            "off": _nonneg("Stream position where the left-out lines began (identifies the report)."),
            "lines": _nonneg("Lines left out."),
            "bytes": _nonneg("Bytes left out."),
            "exact": {"type": "boolean", "default": True,
                      "description": "`false` when the shipper could not know what it lost (a file truncated or "
                                     "replaced unseen): `lines` and `bytes` are then lower bounds."},
        },
        "if": {"type": "object", "required": ["lines"], "properties": {"lines": {"exclusiveMinimum": 0}}},
        "then": {"required": ["off"]},
    }
    batch = {
        "type": "object",
        "description": "One batch of a stream `(job_id, pod, container)`. Unknown fields are ignored. Integers "
                       "are JSON integers (no fraction or exponent) within 64 bits.",
        "required": ["job_id", "pod", "container", "phase", "seq", "events"],
        "properties": {
            "job_id": job_id,
            "pod": _k8s_name("pod's name"),
            "container": _k8s_name("container's name"),
            "phase": {"type": "string", "pattern": anchored(PHASE_RE.pattern),
                      "description": "The pod's default phase (for containers the phase table does not name)."},
            "seq": _nonneg("Numbers the stream's batches in sending order."),
            "eof": {"type": "boolean", "default": False, "description": "The stream's last batch."},
            "exit_code": {"type": ["integer", "null"], "description": "The wrapped command's exit status."},
            "dropped": dropped,
            "events": {"type": "array", "maxItems": config.max_events, "items": {"$ref": "#/components/schemas/Event"}},
        },
    }
    step = {
        "type": "object",
        "required": ["last_output", "truncated", "lines", "omitted_lines", "chunks", "containers"],
        "properties": {
            "last_output": {"type": "string"},
            "truncated": {"type": "boolean"},
            "lines": {"type": "integer", "minimum": 0},
            "omitted_lines": {"type": "integer", "minimum": 0},
            "chunks": {"type": "integer", "minimum": 0},
            "containers": {"type": "array", "items": {
                "type": "object",
                "required": ["pod", "container", "lines", "exit_code"],
                "properties": {"pod": {"type": "string"}, "container": {"type": "string"},
                               "lines": {"type": "integer", "minimum": 0},
                               "exit_code": {"type": ["integer", "null"]}},
            }},
        },
    }
    return {
        "Event": event,
        "IngestBatch": batch,
        "IngestResult": {
            "type": "object", "required": ["accepted", "duplicate"],
            "properties": {"accepted": {"type": "integer", "minimum": 0},
                           "duplicate": {"type": "boolean",
                                         "description": "Every event of the batch was already stored."}},
        },
        "FinalizeRequest": {
            "type": "object",
            "properties": {
                "wait_seconds": {"type": "number", "minimum": 0,
                                 "description": f"How long to wait for every stream's eof (capped at "
                                                f"{config.finalize_max_wait:g} s)."},
                "existing_last_output": {"type": "object", "additionalProperties": {"type": "string"},
                                         "description": "Per phase, a summary kept when longer than the new one."},
            },
        },
        "FinalizeResult": {
            "type": "object",
            "required": ["job_id", "complete", "incomplete_streams", "steps"],
            "properties": {
                "job_id": job_id,
                "complete": {"type": "boolean"},
                "incomplete_streams": {"type": "array", "items": {
                    "type": "object", "required": ["pod", "container"],
                    "properties": {"pod": {"type": "string"}, "container": {"type": "string"}}}},
                "steps": {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/Step"}},
            },
        },
        "Step": step,
        "LogEvent": {
            "type": "object", "required": ["phase", "pod", "container", "ts", "line"],
            "description": "One line of NDJSON from the logs route (also each `data:` line of a followed `log` "
                           "event). Markers (dropped, omitted) are events too.",
            "properties": {"phase": {"type": "string"}, "pod": {"type": "string"},
                           "container": {"type": "string"}, "ts": {"type": "number"},
                           "line": {"type": "string"}},
        },
        "Streams": {
            "type": "object", "required": ["job_id", "finalized", "complete", "streams", "steps"],
            "properties": {
                "job_id": job_id,
                "finalized": {"type": "boolean", "description": "summary.json exists."},
                "complete": {"type": "boolean", "description": "Every stream reached eof."},
                "streams": {"type": "array", "items": {
                    "type": "object",
                    "required": ["pod", "container", "phases", "lines", "last_position", "eof", "exit_code",
                                 "last_activity"],
                    "properties": {
                        "pod": {"type": "string"}, "container": {"type": "string"},
                        "phases": {"type": "array", "items": {"type": "string"}},
                        "lines": {"type": "integer", "minimum": 0, "description": "Lines stored (every one)."},
                        "last_position": {"type": ["integer", "null"], "description": "`off` of the last line."},
                        "eof": {"type": "boolean"},
                        "exit_code": {"type": ["integer", "null"]},
                        "last_activity": {"type": ["number", "null"],
                                          "description": "`ts` of the last line (Unix seconds)."}}}},
                "steps": {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/Step"},
                          "description": "What finalize would answer now, per phase (its live `last_output`)."},
            },
        },
        "Status": {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}},
        "Error": {
            "type": "object", "required": ["error", "detail"],
            "properties": {"error": {"type": "string", "description": "A short machine-readable code."},
                           "detail": {"type": "string", "description": "What was wrong, for people."}},
        },
    }


def _json_body(ref: str, description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}


def _errors(statuses: tuple[int, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for status in statuses:
        resp = _json_body("Error", _ERROR_TEXT[status])
        if status in RETRY_AFTER_STATUSES:
            resp["headers"] = {"Retry-After": {"description": "Whole seconds to wait.",
                                               "schema": {"type": "integer", "minimum": 0}}}
        out[str(status)] = resp
    return out


def _job_param() -> dict[str, Any]:
    return {"name": "job_id", "in": "path", "required": True,
            "schema": {"type": "string", "pattern": anchored(JOB_ID_RE.pattern)}}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _read_params() -> list[dict[str, Any]]:
    return [
        _query("phase", {"type": "string", "pattern": anchored(PHASE_RE.pattern)}, "Only this phase's streams."),
        _query("pod", {"type": "string", "pattern": anchored(K8S_NAME_RE.pattern)}, "Only this pod."),
        _query("container", {"type": "string", "pattern": anchored(K8S_NAME_RE.pattern)}, "Only this container."),
        _query("since", {"type": "string"}, "Events at or after: a duration back from now (`10m`, `2h`), an "
                                            "RFC 3339 time, or Unix seconds."),
        _query("position", {"type": "integer", "minimum": 0},
               "Lines at or after this stream byte position (`off`); reads staging."),
        _query("tail", {"type": "integer", "minimum": 0, "maximum": 5000}, "Only the last N events."),
        _query("limit", {"type": "integer", "minimum": 1, "maximum": 5000, "default": 1000}, "Events per page."),
        _query("cursor", {"type": "string"}, "Continue after a page (its `X-Cursor`)."),
        _query("format", {"type": "string", "enum": ["ndjson", "text"], "default": "ndjson"}, "The page's format."),
        _query("prefix", {"type": "string", "enum": ["0", "1"]}, "`format=text`: start lines with pod/container."),
        _query("source", {"type": "string", "enum": ["auto", "staging", "chunks"], "default": "auto"},
               "`auto`: the chunks once finalized, else staging; `staging`: every stored line (while kept)."),
        _query("follow", {"type": "string", "enum": ["0", "1"]}, "Answer Server-Sent Events and follow."),
        {"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "string"},
         "description": "With follow: resume after this event id."},
    ]


def openapi_document(config: AggregatorConfig) -> dict[str, Any]:
    """The OpenAPI document for an aggregator running with `config` (its limits are stated in it)."""
    gzip_note = (f"The body is JSON, optionally `Content-Encoding: gzip`; at most {config.max_body_bytes} bytes "
                 f"after inflating, and it must arrive within {config.body_timeout:g} s.")
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "blast-logs aggregator",
            "version": API_VERSION,
            "description": "Collects BLAST job pods' log batches and finalizes them into artifacts "
                           "(docs/protocol.md sections 4 and 7). Errors are `{\"error\", \"detail\"}`; never a 500 for "
                           "bad input.",
        },
        "paths": {
            INGEST_PATH: {"post": {
                "operationId": "ingest",
                "summary": "Store one batch of a stream; 200 only once it is durable.",
                "description": gzip_note,
                "security": [{"jobToken": []}],
                "parameters": [{"name": "Content-Encoding", "in": "header", "required": False,
                                "schema": {"type": "string", "enum": ["identity", "gzip", "x-gzip"]}}],
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/IngestBatch"}}}},
                "responses": {"200": _json_body("IngestResult", "The batch is durable in storage."),
                              **_errors(INGEST_ERRORS)},
            }},
            FINALIZE_PATH: {"post": {
                "operationId": "finalize",
                "summary": "Build the job's chunk artifacts and summary.json from what storage holds.",
                "description": gzip_note + " The body is optional.",
                "security": [{"adminToken": []}],
                "parameters": [{"name": "job_id", "in": "path", "required": True,
                                "schema": {"type": "string", "pattern": anchored(JOB_ID_RE.pattern),
                                           "not": JOB_ID_NOT}}],
                "requestBody": {"required": False, "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/FinalizeRequest"}}}},
                "responses": {"200": _json_body("FinalizeResult", "The summary, also written as summary.json."),
                              **_errors(FINALIZE_ERRORS)},
            }},
            LOGS_PATH: {"get": {
                "operationId": "logs",
                "summary": "A job's events in artifact order (a page), or followed as Server-Sent Events.",
                "description": "docs/protocol.md section 10. Without `phase`, a stream feeding several phases "
                               "comes once. `follow=1` (or `Accept: text/event-stream`) answers `text/event-stream`: "
                               "`log` events (one JSON event per `data:` line) whose `id` resumes the follow "
                               "(`Last-Event-ID`), `: heartbeat` comments, an `end` event once every selected "
                               "stream reached eof. A page carries `X-Cursor` (after its last event) and `X-More`.",
                "security": [{"readToken": []}, {"adminToken": []}],
                "parameters": [_job_param(), *_read_params()],
                "responses": {"200": {
                    "description": "The events: NDJSON (`format=ndjson`), plain lines (`format=text`), or SSE.",
                    "headers": {"X-Cursor": {"description": "Pass as `cursor` for the next page.",
                                             "schema": {"type": "string"}},
                                "X-More": {"description": "Whether more events follow the page.",
                                           "schema": {"type": "string", "enum": ["true", "false"]}}},
                    "content": {"application/x-ndjson": {"schema": {"$ref": "#/components/schemas/LogEvent"}},
                                "text/plain": {"schema": {"type": "string"}},
                                "text/event-stream": {"schema": {"type": "string"}}}},
                    **_errors(READ_ERRORS)},
            }},
            STREAMS_PATH: {"get": {
                "operationId": "streams",
                "summary": "Each stream's state and each phase's live `last_output` (finalize's rule, now).",
                "security": [{"readToken": []}, {"adminToken": []}],
                "parameters": [_job_param()],
                "responses": {"200": _json_body("Streams", "The job's streams and steps."),
                              **_errors(READ_ERRORS)},
            }},
            VIEW_PATH: {"get": {
                "operationId": "view",
                "summary": "The log viewer page (HTML, no external assets). It holds no job data: it asks for a "
                           "read token (URL fragment or prompt) and sends it as a header.",
                "security": [],
                "parameters": [_job_param()],
                "responses": {"200": {"description": "The page.",
                                      "content": {"text/html": {"schema": {"type": "string"}}}},
                              **_errors(VIEW_ERRORS)},
            }},
            "/healthz": {"get": {
                "operationId": "healthz", "summary": "The process is alive.", "security": [],
                "responses": {"200": _json_body("Status", "Alive.")},
            }},
            "/readyz": {"get": {
                "operationId": "readyz", "summary": "Storage is reachable and the replica is not draining.",
                "security": [],
                "responses": {"200": _json_body("Status", "Ready."),
                              **_errors(READYZ_ERRORS)},
            }},
            "/metrics": {"get": {
                "operationId": "metrics", "summary": "Prometheus metrics.", "security": [],
                "responses": {"200": {"description": "Prometheus text exposition.",
                                      "content": {"text/plain": {"schema": {"type": "string"}}}}},
            }},
            OPENAPI_PATH: {"get": {
                "operationId": "openapi", "summary": "This document.", "security": [],
                "responses": {"200": {"description": "The OpenAPI document.",
                                      "content": {"application/json": {"schema": {"type": "object"}}}}},
            }},
        },
        "components": {
            "schemas": _schemas(config),
            "securitySchemes": {
                "jobToken": {"type": "http", "scheme": "bearer",
                             "description": "`job_id.base64url(HMAC-SHA256(secret, \"ingest:\" + job_id))`; "
                                            "`blast-log-aggregator token JOB_ID` prints it."},
                "readToken": {"type": "http", "scheme": "bearer",
                              "description": "`job_id.base64url(HMAC-SHA256(secret, \"read:\" + job_id))`; "
                                             "`blast-log-aggregator token --read JOB_ID` prints it. Reads one job."},
                "adminToken": {"type": "http", "scheme": "bearer",
                               "description": "The admin token (BLAST_LOGS_ADMIN_TOKEN)."},
            },
        },
    }
