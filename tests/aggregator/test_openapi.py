"""The OpenAPI document at /openapi.json stays in step with the handlers.

Every route is documented and every documented operation is routed; the ingest schema states
blastlogs.protocol's patterns and limits; on generated bodies the schema accepts exactly what
`parse_batch` accepts; real answers validate against their documented schemas.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from typing import Any

import jsonschema
import orjson
import pytest
from agg_helpers import JOB, admin_headers, batch, dumps, events, ingest_headers, make_config
from agg_strategies import MAX_EVENTS, batch_objects
from hypothesis import HealthCheck, event, given, settings
from jsonschema.protocols import Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from aggregator.app import make_app
from aggregator.errors import BadBatch
from aggregator.ingest import parse_batch
from aggregator.openapi import LOGS_PATH, OPENAPI_PATH, STREAMS_PATH, openapi_document
from blastlogs.protocol import (
    FINALIZE_PATH,
    INGEST_PATH,
    JOB_ID_RE,
    K8S_NAME_MAX,
    K8S_NAME_RE,
    MAX_BATCH_EVENTS,
    PHASE_RE,
)

DOC_URI = "urn:blast-logs:openapi"
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "options", "head", "trace"}


def _ecma_pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[jsonschema.ValidationError]:
    """JSON Schema's `pattern` is ECMA-262, where `$` does not match before a trailing newline (Python's does)."""
    if validator.is_type(instance, "string"):
        compiled = pattern[:-1] + r"\Z" if pattern.endswith("$") else pattern
        if not re.search(compiled, instance):
            yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


EcmaValidator = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"pattern": _ecma_pattern})


def validator_for(doc: dict[str, Any], name: str) -> Validator:
    """A validator for components.schemas[name], resolving `$ref`s within the whole document."""
    registry: Registry[Any] = Registry().with_resource(
        DOC_URI, Resource.from_contents(doc, default_specification=DRAFT202012))
    v: Validator = EcmaValidator({"$ref": f"{DOC_URI}#/components/schemas/{name}"}, registry=registry)
    return v


def documented_operations(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(m.upper(), path) for path, item in doc["paths"].items() for m in item if m in HTTP_METHODS}


def routed_operations(app: Any) -> set[tuple[str, str]]:
    """(method, path template) of every route; aiohttp's automatic HEAD for each GET is not an operation."""
    return {(r.method, r.resource.canonical) for r in app.router.routes() if r.method != "HEAD"}


def test_every_route_is_documented_and_every_operation_routed() -> None:
    config = make_config()
    assert routed_operations(make_app(config)) == documented_operations(openapi_document(config))


def test_document_is_openapi_31_with_valid_schemas() -> None:
    doc = openapi_document(make_config())
    assert doc["openapi"].startswith("3.1")
    for name, schema in doc["components"]["schemas"].items():
        jsonschema.Draft202012Validator.check_schema(schema), name
    for path, item in doc["paths"].items():
        for method, op in item.items():
            assert op["responses"], (method, path)
            for status, resp in op["responses"].items():
                assert status == "200" or int(status) >= 400
                assert resp["description"]
            # Every protected operation names its token; probes and the document need none.
            assert ("security" in op) and (op["security"] == [] or path in (INGEST_PATH, FINALIZE_PATH, LOGS_PATH,
                                                                             STREAMS_PATH))
    assert doc["paths"][INGEST_PATH]["post"]["security"] == [{"jobToken": []}]
    assert doc["paths"][FINALIZE_PATH]["post"]["security"] == [{"adminToken": []}]
    for path in (LOGS_PATH, STREAMS_PATH):
        assert doc["paths"][path]["get"]["security"] == [{"readToken": []}, {"adminToken": []}]


def test_ingest_schema_states_the_protocol_rules() -> None:
    doc = openapi_document(make_config())
    schema = doc["components"]["schemas"]["IngestBatch"]
    props = schema["properties"]
    assert set(schema["required"]) == {"job_id", "pod", "container", "phase", "seq", "events"}
    assert props["job_id"]["pattern"] == f"^{JOB_ID_RE.pattern}$"
    for name in ("pod", "container"):
        assert props[name]["pattern"] == f"^{K8S_NAME_RE.pattern}$"
        assert props[name]["maxLength"] == K8S_NAME_MAX
    assert props["phase"]["pattern"] == f"^{PHASE_RE.pattern}$"
    assert props["seq"] == {**props["seq"], "type": "integer", "minimum": 0}
    assert props["events"]["maxItems"] == MAX_BATCH_EVENTS
    assert "additionalProperties" not in schema  # unknown fields are ignored
    event = doc["components"]["schemas"]["Event"]
    assert set(event["required"]) == {"off", "ts", "line"}
    assert event["properties"]["off"]["minimum"] == 0
    finalize_param = doc["paths"][FINALIZE_PATH]["post"]["parameters"][0]
    assert finalize_param["schema"]["pattern"] == f"^{JOB_ID_RE.pattern}$"


def test_document_states_the_configured_limits() -> None:
    doc = openapi_document(make_config(max_events=7, max_body_bytes=4096))
    assert doc["components"]["schemas"]["IngestBatch"]["properties"]["events"]["maxItems"] == 7
    assert "4096 bytes" in doc["paths"][INGEST_PATH]["post"]["description"]


# --- the schema accepts exactly what parse_batch accepts -------------------------------------------

SMALL_CONFIG = make_config(max_events=MAX_EVENTS)
BATCH_VALIDATOR = validator_for(openapi_document(SMALL_CONFIG), "IngestBatch")


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(obj=batch_objects())
def test_schema_accepts_exactly_what_the_handler_accepts(obj: Any) -> None:
    config, validator = SMALL_CONFIG, BATCH_VALIDATOR
    body = orjson.dumps(obj)
    try:
        parse_batch(body, max_events=config.max_events, max_line_chars=config.max_line_chars)
        handler_ok, why = True, ""
    except BadBatch as e:
        handler_ok, why = False, str(e)
    errors = [e.message for e in validator.iter_errors(orjson.loads(body))]
    event("accepted" if handler_ok else "refused")
    assert handler_ok == (not errors), f"parse_batch: {why or 'ok'}; schema: {errors or 'ok'}; body {body[:300]!r}"


# --- real answers match their documented schemas ----------------------------------------------------

def _response_schema(doc: dict[str, Any], path: str, method: str, status: int) -> str:
    content = doc["paths"][path][method]["responses"][str(status)]["content"]
    ref: str = content["application/json"]["schema"]["$ref"]
    return ref.rsplit("/", 1)[1]


async def test_served_document_and_real_answers_match_it(aiohttp_client: Any, local_kit: Any) -> None:
    config = make_config(retry_after=3)
    client = await aiohttp_client(make_app(config, store=local_kit.open()))
    r = await client.get(OPENAPI_PATH)
    assert r.status == 200 and r.content_type == "application/json"
    doc = orjson.loads(await r.read())
    assert doc == orjson.loads(orjson.dumps(openapi_document(config)))

    def check(path: str, method: str, status: int, body: Any) -> None:
        errors = list(validator_for(doc, _response_schema(doc, path, method, status)).iter_errors(body))
        assert not errors, (path, status, body, errors)

    finalize_path = FINALIZE_PATH.format(job_id=JOB)
    cases: list[tuple[str, str, str, dict[str, str], bytes, int]] = [
        (INGEST_PATH, INGEST_PATH, "post", ingest_headers(), dumps(batch(evs=events([0, 1]), eof=True, exit_code=2)), 200),
        (INGEST_PATH, INGEST_PATH, "post", ingest_headers(), b"[]", 400),
        (INGEST_PATH, INGEST_PATH, "post", {}, b"{}", 401),
        (INGEST_PATH, INGEST_PATH, "post", admin_headers(), b"{}", 403),
        (INGEST_PATH, INGEST_PATH, "post", ingest_headers(), b"x" * (config.max_body_bytes + 1), 413),
        (finalize_path, FINALIZE_PATH, "post", admin_headers(), dumps({"wait_seconds": 0}), 200),
        (FINALIZE_PATH.format(job_id="nope"), FINALIZE_PATH, "post", admin_headers(), b"", 404),
        (finalize_path, FINALIZE_PATH, "post", ingest_headers(), b"", 403),
        (STREAMS_PATH.format(job_id=JOB), STREAMS_PATH, "get", admin_headers(), b"", 200),
        (STREAMS_PATH.format(job_id=JOB), STREAMS_PATH, "get", ingest_headers(), b"", 403),
        (STREAMS_PATH.format(job_id="nope"), STREAMS_PATH, "get", admin_headers(), b"", 404),
        (LOGS_PATH.format(job_id=JOB) + "?limit=0", LOGS_PATH, "get", admin_headers(), b"", 400),
        (LOGS_PATH.format(job_id=JOB), LOGS_PATH, "get", {}, b"", 401),
        ("/healthz", "/healthz", "get", {}, b"", 200),
        ("/readyz", "/readyz", "get", {}, b"", 200),
    ]
    for url, path, method, headers, data, status in cases:
        r = await client.request(method.upper(), url, headers=headers, data=data)
        assert r.status == status, (url, await r.text())
        assert str(status) in doc["paths"][path][method]["responses"]
        check(path, method, status, orjson.loads(await r.read()))
    r = await client.get("/metrics")
    assert r.status == 200 and "text/plain" in r.headers["Content-Type"]


def test_a_config_change_changes_the_document_not_the_routes() -> None:
    small = dataclasses.replace(make_config(), max_events=3, body_timeout=1.5)
    doc = openapi_document(small)
    assert "1.5 s" in doc["paths"][INGEST_PATH]["post"]["description"]
    assert routed_operations(make_app(small)) == documented_operations(doc)


@pytest.mark.parametrize("status", [400, 401, 403, 408, 413, 429, 503])
def test_every_ingest_error_status_is_documented_with_retry_after_where_due(status: int) -> None:
    responses = openapi_document(make_config())["paths"][INGEST_PATH]["post"]["responses"]
    assert str(status) in responses
    assert ("Retry-After" in responses[str(status)].get("headers", {})) == (status in (429, 503))
