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
from agg_helpers import local_kit as local_kit
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from jsonschema.protocols import Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from aggregator.app import make_app
from aggregator.errors import BadBatch
from aggregator.ingest import parse_batch
from aggregator.openapi import OPENAPI_PATH, openapi_document
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
            assert ("security" in op) and (op["security"] == [] or path in (INGEST_PATH, FINALIZE_PATH))
    assert doc["paths"][INGEST_PATH]["post"]["security"] == [{"jobToken": []}]
    assert doc["paths"][FINALIZE_PATH]["post"]["security"] == [{"adminToken": []}]


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

MAX_EVENTS = 4
_INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
# JSON Schema counts 3.0 as an integer, orjson (and so parse_batch) does not: the document says integers are
# written without a fraction, so generated floats are never integral.
_FLOATS = st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer())
_SCALARS = st.one_of(st.none(), st.booleans(), _INT64, _FLOATS, st.text(max_size=12))
_ANY = st.recursive(_SCALARS, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                    max_leaves=6)
_NEAR_IDS = st.sampled_from(["", ".", "..", "a/b", "a%2fb", "a\x00b", "a\nb", "a\n", "é", "A", "-a", "a-",
                             "a" * 129, "a" * 254, "a..b", "0", "x_y", "a.b-c"])


def _id(regex: re.Pattern[str], max_len: int | None = None) -> st.SearchStrategy[str]:
    valid = st.from_regex(regex, fullmatch=True)
    if max_len is not None:
        valid = valid.filter(lambda s: len(s) <= max_len)
    return st.one_of(valid, _NEAR_IDS, valid.map(lambda s: s + "\n"))


def _nonneg_int() -> st.SearchStrategy[Any]:
    return st.one_of(st.integers(min_value=0, max_value=2**63 - 1), st.integers(min_value=-5, max_value=5), _ANY)


_EVENT = st.one_of(
    st.fixed_dictionaries({"off": st.integers(0, 2**40), "ts": st.floats(0, 2e9), "line": st.text(max_size=40)},
                          optional={"extra": _ANY}),
    st.fixed_dictionaries({}, optional={"off": _nonneg_int(), "ts": st.one_of(_INT64, _FLOATS, _ANY),
                                        "line": st.one_of(st.text(max_size=10), _ANY)}),
    _ANY,
)
_DROPPED = st.one_of(
    st.none(),
    st.fixed_dictionaries({}, optional={"off": _nonneg_int(), "lines": _nonneg_int(), "bytes": _nonneg_int()}),
    _ANY,
)
_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "job_id": st.one_of(_id(JOB_ID_RE), _ANY),
    "pod": st.one_of(_id(K8S_NAME_RE, K8S_NAME_MAX), _ANY),
    "container": _id(K8S_NAME_RE, K8S_NAME_MAX),
    "phase": st.one_of(_id(PHASE_RE), _ANY),
    "seq": _nonneg_int(),
    "eof": st.one_of(st.booleans(), _ANY),
    "exit_code": st.one_of(st.none(), _INT64, _ANY),
    "dropped": _DROPPED,
    "events": st.one_of(st.lists(_EVENT, max_size=MAX_EVENTS + 1), _ANY),
}


@st.composite
def batch_objects(draw: st.DrawFn) -> Any:
    """Mostly-valid batches with a few fields replaced, dropped or added, and sometimes no object at all."""
    if draw(st.integers(0, 19)) == 0:
        return draw(_ANY)
    valid = batch(evs=events(range(draw(st.integers(0, MAX_EVENTS)))))
    for name in draw(st.lists(st.sampled_from(sorted(_FIELDS)), max_size=3, unique=True)):
        if draw(st.booleans()):
            valid[name] = draw(_FIELDS[name])
        else:
            valid.pop(name, None)
    if draw(st.booleans()):
        valid[draw(st.text(max_size=8))] = draw(_ANY)
    return valid


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
