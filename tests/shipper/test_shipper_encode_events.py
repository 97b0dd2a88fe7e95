"""`encode_events` (the bulk event encoder) is byte-for-byte `encode_event` on every kind of line."""

from __future__ import annotations

import random

import orjson

from shipper.batch import encode_event, encode_events

TRICKY = [
    "", "plain", '"', '","', '\\', '\\"', 'a","b', '\\","\\', '"",""', "é日本語😀", "\t tab",
    "\u2028\u2029", "\ufffd", 'x",', '\\",', '{"off":1,"ts":2,"line":"x"}', "[REDACTED:token]", " [... 12 chars cut]",
]


def test_matches_one_by_one_on_tricky_lines() -> None:
    offs = [i * 7 for i in range(len(TRICKY))]
    for ts in (0.0, 1764270000.123, 1795815932.5934567, 1e-7, 123456789012.5):
        assert encode_events(offs, ts, TRICKY) == [encode_event(o, ts, t) for o, t in zip(offs, TRICKY, strict=True)]


def test_matches_on_random_text_and_decodes_back() -> None:
    rnd = random.Random(6)
    alphabet = '",\\ a\té\u2028😀{}[]:'
    for _ in range(200):
        lines = ["".join(rnd.choices(alphabet, k=rnd.randrange(0, 12))) for _ in range(rnd.randrange(1, 20))]
        offs = sorted(rnd.sample(range(10**12), len(lines)))
        ts = rnd.uniform(0, 2e9)
        got = encode_events(offs, ts, lines)
        assert got == [encode_event(o, ts, t) for o, t in zip(offs, lines, strict=True)]
        assert [orjson.loads(e)["line"] for e in got] == lines


def test_empty() -> None:
    assert encode_events([], 1.0, []) == []
