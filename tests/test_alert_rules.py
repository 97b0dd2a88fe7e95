"""manifests/alerts/blast-logs-rules.yaml: well formed (`promtool check rules` where promtool is
installed), and every series it uses is one the aggregator's or the shipper's /metrics serves."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from agg_helpers import JOB, StoreKit, admin_headers, batch, dumps, events, ingest_headers, make_config
from k8s_templates import ROOT, load_all

from aggregator.app import make_app
from aggregator.metrics import FINALIZE_OUTCOMES, Metrics
from shipper.metrics import ShipperMetrics

RULES = ROOT / "manifests" / "alerts" / "blast-logs-rules.yaml"
SERIES_RE = re.compile(r"\b(blast_logs_[a-z0-9_]+)\b(?:\{([^}]*)\})?")
MATCHER_RE = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"([^\"]*)\"")
BY_RE = re.compile(r"\bby\s*\(([^)]*)\)")
#: Labels Prometheus' Kubernetes discovery gives every scraped series (relabelled from the pod).
TARGET_LABELS = {"namespace", "pod", "instance", "job", "le"}


def rules() -> list[dict[str, Any]]:
    (doc,) = load_all(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def series_names(exposition: str) -> set[str]:
    """Every series name the exposition text can hold, from its TYPE lines."""
    names: set[str] = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.update(name + s for s in (("_bucket", "_count", "_sum") if kind == "histogram" else ("",)))
    return names


def declared_labels() -> dict[str, set[str]]:
    """Each metric's label names as the programs declare them (prometheus_client keeps them on the
    metric: series without samples yet show none in the exposition)."""
    out: dict[str, set[str]] = {}
    for owner in (Metrics(), ShipperMetrics()):
        for metric in vars(owner).values():
            if hasattr(metric, "_labelnames"):
                out[metric._name] = set(metric._labelnames)
    return out


def labels_of(series: str, declared: dict[str, set[str]]) -> set[str]:
    for suffix in ("_total", "_bucket", "_count", "_sum", ""):
        if suffix == "" or series.endswith(suffix):
            base = series.removesuffix(suffix) if suffix else series
            if base in declared:
                return declared[base] | TARGET_LABELS
    raise AssertionError(f"{series}: no such metric declared")


async def aggregator_exposition(aiohttp_client: Any, kit: StoreKit) -> str:
    """The aggregator's /metrics after the traffic that gives its labelled series samples."""
    client = await aiohttp_client(make_app(make_config(), store=kit.open()))
    await client.post("/v1/ingest", data=dumps(batch(evs=events([9]), dropped={"off": 0, "lines": 2, "bytes": 9})),
                      headers=ingest_headers())
    await client.post("/v1/ingest", data=dumps(batch()), headers={"Authorization": "Bearer x.y"})
    await client.post(f"/v1/jobs/{JOB}/finalize", headers=admin_headers())
    return str(await (await client.get("/metrics")).text())


def test_every_rule_is_well_formed() -> None:
    seen = set()
    for rule in rules():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert re.fullmatch(r"BlastLogs[A-Za-z]+", rule["alert"]) and rule["alert"] not in seen
        seen.add(rule["alert"])
        assert rule["labels"]["severity"] in ("info", "warning", "critical")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert rule["expr"].count("(") == rule["expr"].count(")")
        assert SERIES_RE.search(rule["expr"]), rule["alert"]


def test_promtool_checks_the_rules() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian: the prometheus package)")
    proc = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


async def test_every_series_and_label_used_is_served(aiohttp_client: Any, local_kit: StoreKit) -> None:
    served = series_names(await aggregator_exposition(aiohttp_client, local_kit))
    served |= series_names(ShipperMetrics().render().decode())
    assert "blast_logs_aggregator_rejected_tokens_total" in served  # the exposition was read
    declared = declared_labels()
    used = 0
    for rule in rules():
        expr = rule["expr"]
        found = SERIES_RE.findall(expr)
        for name, matchers in found:
            used += 1
            assert name in served, (rule["alert"], name)
            for label, _ in MATCHER_RE.findall(matchers):
                assert label in labels_of(name, declared), (rule["alert"], name, label)
        for group in BY_RE.findall(expr):
            for label in (g.strip() for g in group.split(",")):
                assert any(label in labels_of(n, declared) for n, _ in found), (rule["alert"], label)
        assert set(re.findall(r'outcome="([a-z_]+)"', expr)) <= set(FINALIZE_OUTCOMES)
    assert used >= len(rules())


def test_the_rules_sit_next_to_the_manifests() -> None:
    assert Path(RULES).parent.parent == ROOT / "manifests"
