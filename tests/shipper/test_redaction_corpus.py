"""Redaction, measured on a corpus: recall on realistic secrets, and no ordinary line altered.

The corpus (tests/data/secrets-corpus.jsonl, tests/data/ordinary-corpus-*.log) is built by
bench/make_redaction_corpus.py from a fixed seed; the synthetic parts are checked to be exactly
what the script makes, so nobody tunes the corpus by hand to the redactor.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from typing import Any

import pytest
from shipper_helpers import ROOT

from shipper.sanitise import Sanitiser

DATA = ROOT / "tests" / "data"
SECRETS = DATA / "secrets-corpus.jsonl"
ORDINARY = (DATA / "ordinary-corpus-synthetic.log", DATA / "ordinary-corpus-blast.log")
RECALL_TARGET = 0.995
#: The shipper sanitises a batch of lines at once (`Sanitiser.lines`) and a line alone (`Sanitiser.line`).
MODES = ("lines", "line")


def _records() -> list[dict[str, Any]]:
    return [json.loads(line) for line in SECRETS.read_text(encoding="utf-8").splitlines()]


def _sanitise(lines: list[str], mode: str) -> list[str]:
    s = Sanitiser()
    raws = [line.encode() for line in lines]
    return s.lines(raws) if mode == "lines" else [s.line(r) for r in raws]


def test_the_corpus_is_what_the_generator_makes() -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import make_redaction_corpus as gen
    finally:
        sys.path.pop(0)
    assert SECRETS.read_text(encoding="utf-8") == gen.render_secrets(gen.secret_records())
    assert ORDINARY[0].read_text(encoding="utf-8") == gen.render_lines(gen.synthetic_lines())


def test_the_corpus_is_big_and_varied_enough() -> None:
    records = _records()
    kinds = Counter(r["kind"] for r in records for _ in r["secrets"])
    assert sum(kinds.values()) >= 300 and len(kinds) >= 15, kinds
    ordinary = [line for path in ORDINARY for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(ordinary) >= 2000
    assert sum(1 for line in ORDINARY[1].read_text().splitlines() if line.strip()) >= 500  # real BLAST output
    # No recorded secret occurs in the ordinary lines.
    text = "\n".join(ordinary)
    assert not [s for r in records for s in r["secrets"] if s in text]


@pytest.mark.parametrize("mode", MODES)
def test_recall_on_realistic_secrets(mode: str) -> None:
    total: Counter[str] = Counter()
    missed: Counter[str] = Counter()
    examples: dict[str, str] = {}
    for rec in _records():
        out = "\n".join(_sanitise(rec["lines"], mode))
        for secret in rec["secrets"]:
            total[rec["kind"]] += 1
            if secret in out:
                missed[rec["kind"]] += 1
                examples.setdefault(rec["kind"], out[:200])
    recall = 1 - sum(missed.values()) / sum(total.values())
    print(f"\nredaction recall ({mode}): {recall:.4f} = {sum(total.values()) - sum(missed.values())}/{sum(total.values())} "
          f"secret values over {len(total)} kinds; missed by kind: {dict(missed) or 'none'}")
    assert recall >= RECALL_TARGET, f"recall {recall:.4f}; missed {dict(missed)}; e.g. {examples}"


@pytest.mark.parametrize("mode", MODES)
def test_no_ordinary_line_is_altered(mode: str) -> None:
    altered: list[tuple[str, str]] = []
    count = 0
    for path in ORDINARY:
        lines = path.read_text(encoding="utf-8").splitlines()
        count += len(lines)
        for i in range(0, len(lines), 500):  # batches the size a busy stream sends
            batch = lines[i:i + 500]
            altered += [(a, b) for a, b in zip(batch, _sanitise(batch, mode), strict=True) if a != b]
    print(f"\nordinary lines altered ({mode}): {len(altered)} of {count}")
    assert not altered, altered[:10]


def test_a_secret_env_value_on_the_line_after_its_name_is_redacted_across_batches() -> None:
    """`kubectl get pod -o yaml` prints an env entry's name and value on two lines; the state spans batches."""
    s = Sanitiser()
    first = s.lines([b"    env:", b"    - name: DB_PASSWORD"])
    second = s.lines([b'      value: "hunter2-Xy9"', b"    - name: BLAST_LOGS_TOKEN_FILE",
                      b"      value: /var/run/secrets/blast-logs/token", b"    - name: API_TOKEN", b"      valueFrom:"])
    assert first == ["    env:", "    - name: DB_PASSWORD"]
    assert second == ['      value: "[REDACTED:password]"', "    - name: BLAST_LOGS_TOKEN_FILE",
                      "      value: /var/run/secrets/blast-logs/token", "    - name: API_TOKEN", "      valueFrom:"]
    one = Sanitiser()
    assert [one.line(r) for r in (b"- name: CLIENT_SECRET", b"  value: abc8Q~def")] == [
        "- name: CLIENT_SECRET", "  value: [REDACTED:secret]"]
