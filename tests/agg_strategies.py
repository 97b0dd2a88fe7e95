"""Hypothesis strategies for batch objects: mostly valid, with fields replaced, dropped or added.

Shared by the schema-versus-handler property test (test_openapi.py) and the API fuzzers (test_fuzz_api.py).
"""

from __future__ import annotations

import re
from typing import Any

from agg_helpers import batch, events
from hypothesis import strategies as st

from blastlogs.protocol import JOB_ID_RE, K8S_NAME_MAX, K8S_NAME_RE, PHASE_RE

MAX_EVENTS = 4
INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
# JSON Schema counts 3.0 as an integer, orjson (and so parse_batch) does not: the document says integers are
# written without a fraction, so generated floats are never integral.
_FLOATS = st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer())
_SCALARS = st.one_of(st.none(), st.booleans(), INT64, _FLOATS, st.text(max_size=12))
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
    st.fixed_dictionaries({}, optional={"off": _nonneg_int(), "ts": st.one_of(INT64, _FLOATS, _ANY),
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
    "exit_code": st.one_of(st.none(), INT64, _ANY),
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
