"""docs/protocol.md against the code where that is cheap, so the written protocol cannot drift.

Checked: the section numbering others refer to, the id patterns, limits and marker texts against
`blastlogs.protocol`, the phase table, the worked examples (line cut, `last_output` cuts, the
examples of sections 4, 6 and 7 against each other, the token), and that every `BLAST_LOGS_*`
name the page mentions exists in the code. Imports only `blastlogs.protocol` and the function
that computes `last_output`, so moving other modules does not break it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import inspect
import json
import os
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from paths import ROOT

from aggregator.artifacts import last_output
from aggregator.auth import read_token
from aggregator.openapi import LOGS_PATH, STREAMS_PATH, VIEW_PATH
from blastlogs.protocol import (
    APP_LABEL_PHASES,
    DEFAULT_PHASE_TABLE,
    FINALIZE_PATH,
    INGEST_PATH,
    JOB_ID_RE,
    K8S_NAME_MAX,
    K8S_NAME_RE,
    MAX_BATCH_BYTES,
    MAX_BATCH_EVENTS,
    MAX_LINE_CHARS,
    PHASE_RE,
    UNKNOWN_PHASE,
    cap_line,
    cut_marker,
    dropped_marker,
    omitted_marker,
    valid_job_id,
    valid_k8s_name,
    valid_phase,
)

SECTIONS = {
    1: "The job",
    2: "Inside the pod",
    3: "`blast-log-shipper` command line",
    4: "Wire protocol: shipper → aggregator",
    5: "Phases",
    6: "Artifacts in storage",
    7: "Finalize: job API → aggregator",
    8: "Configuration",
    9: "Running it",
    10: "Reading logs",
}
#: Names other systems set; docs/protocol.md section 8 fixes them.
FIXED_NAMES = {
    "BLAST_LOGS_DIR", "BLAST_LOGS_AGGREGATOR_URL", "BLAST_LOGS_TOKEN", "BLAST_LOGS_TOKEN_FILE",
    "BLAST_LOGS_JOB_ID", "BLAST_LOGS_POD", "BLAST_LOGS_NAMESPACE", "BLAST_LOGS_PHASE",
    "BLAST_LOGS_STORE", "BLAST_LOGS_AZURE_ACCOUNT_URL", "BLAST_LOGS_AZURE_CONNECTION_STRING",
    "BLAST_LOGS_SECRET", "BLAST_LOGS_ADMIN_TOKEN",
}
N = 12345  # stands for a count in a marker template


DOC = ROOT / "docs" / "protocol.md"


@cache
def sections() -> dict[int, str]:
    """Section number -> its text, heading included."""
    text = DOC.read_text(encoding="utf-8")
    starts = [(int(m.group(1)), m.start()) for m in re.finditer(r"^## (\d+)\. ", text, re.M)]
    ends = [start for _, start in starts[1:]] + [len(text)]
    return {num: text[start:end] for (num, start), end in zip(starts, ends, strict=True)}


def section(num: int) -> str:
    return sections()[num]


def fenced(text: str, lang: str = "") -> list[str]:
    """The bodies of the fenced blocks opened with ```lang in `text`."""
    return re.findall(rf"^```{re.escape(lang)}\n(.*?)^```$", text, re.M | re.S)


def template(marker: str) -> str:
    return marker.replace(str(N), "N")


def test_sections_are_numbered_1_to_10_with_stable_titles() -> None:
    headings = re.findall(r"^## (\d+)\. (.*)$", DOC.read_text(encoding="utf-8"), re.M)
    assert [(int(n), title) for n, title in headings] == list(SECTIONS.items())


#: Text the repository is made of (code, tests, manifests, scripts, images); folders never searched.
_TEXT_SUFFIXES = {".py", ".md", ".sh", ".yaml", ".yml", ".toml", ".json", ".in", ".tmpl", ".conf"}
_NOT_OURS = {".git", ".venv", ".tools", "__pycache__", "node_modules", "build", "dist"}


def _source_files() -> list[Path]:
    """Every text file of the repository (Dockerfiles and the CI script included), but this test."""
    out = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = sorted(d for d in dirs if d not in _NOT_OURS and not d.endswith((".egg-info", "_cache")))
        for name in sorted(files):
            path = Path(folder, name)
            if (path.suffix in _TEXT_SUFFIXES or name.startswith("Dockerfile") or path == ROOT / ".ci" / "run") \
                    and path != Path(__file__).resolve():
                out.append(path)
    return out


def test_readme_and_docs_point_at_the_page_not_at_a_file_outside_the_repository() -> None:
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text(encoding="utf-8")
        assert "CONTRACT" not in text, path
    assert "docs/protocol.md" in (ROOT / "README.md").read_text(encoding="utf-8")


def test_no_source_file_points_outside_the_repository_for_the_protocol() -> None:
    files = _source_files()
    assert ROOT / "blastlogs" / "protocol.py" in files and ROOT / "Dockerfile.shipper" in files
    offenders = [str(p.relative_to(ROOT)) for p in files if "CONTRACT" in p.read_text(encoding="utf-8", errors="replace")]
    assert offenders == []


def test_routes() -> None:
    assert f"POST {INGEST_PATH}" in section(4)
    assert f"POST {FINALIZE_PATH}" in section(7)
    for path in (LOGS_PATH, STREAMS_PATH, VIEW_PATH):
        assert f"GET {path}" in section(10)


def test_read_token_example() -> None:
    example = re.search(r"```\n(elb-123\.[A-Za-z0-9_-]+)\n```", section(10))
    assert example is not None
    assert example.group(1) == read_token("s3cret", "elb-123")


def test_id_patterns() -> None:
    text = section(4)
    for pattern in (JOB_ID_RE.pattern, K8S_NAME_RE.pattern, PHASE_RE.pattern):
        assert f"`{pattern}`" in text
    assert f"at most {K8S_NAME_MAX} characters" in text


def test_limits() -> None:
    text = section(4)
    assert MAX_BATCH_BYTES % 2**20 == 0
    assert f"**{MAX_LINE_CHARS:,} characters**" in text
    assert f"**{MAX_BATCH_EVENTS:,} events**" in text
    assert f"**{MAX_BATCH_BYTES // 2**20} MiB**" in text


def test_line_cut_marker_and_its_example() -> None:
    text = section(4)
    assert f"`{template(cut_marker(N))}`" in text
    m = re.search(r"a line of ([\d,]+) characters becomes its first ([\d,]+) characters and\s+`([^`]+)`", text)
    assert m is not None
    total, kept, marker = int(m[1].replace(",", "")), int(m[2].replace(",", "")), m[3]
    assert cap_line("x" * total) == "x" * kept + marker
    assert f"{kept:,} + {len(marker)} = {MAX_LINE_CHARS:,}" in text


def test_marker_texts() -> None:
    assert f"`{template(omitted_marker(N))}`" in section(6)
    dropped = template(dropped_marker(N, N)).replace("(N bytes)", "(B bytes)")
    assert f"`{dropped}`" in section(6)
    inexact = template(dropped_marker(N, N, exact=False)).replace("(N bytes)", "(B bytes)")
    assert f"`{inexact}`" in section(6) and inexact in section(4)


def _table_rows(text: str) -> list[list[str]]:
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[1:]]  # no header


def test_phase_table_is_the_default() -> None:
    table: dict[str, dict[str, tuple[str, ...]]] = {}
    *named, other = _table_rows(section(5))  # the section's one table
    for containers, feeds, primary in named:
        for container in re.findall(r"`([^`]+)`", containers):
            table[container] = {"feeds": tuple(feeds.split(", ")), "primary": tuple(primary.split(", "))}
    assert table == DEFAULT_PHASE_TABLE
    assert other == ["any other container", "the pod's default phase", "none"]


def test_default_phase_from_the_app_label() -> None:
    derived = ", ".join(f"`{app}` → `{phase}`" for app, phase in APP_LABEL_PHASES.items())
    assert f"{derived}, anything else → `{UNKNOWN_PHASE}`" in section(3)


def test_last_output_limits() -> None:
    params = inspect.signature(last_output).parameters
    limit, half = params["limit"].default, params["half"].default
    text = section(7)
    assert f"If S has at most {limit:,} bytes" in text
    assert f"S's first {half:,} bytes" in text and f"S's last {half:,} bytes" in text


def _parts(text: str) -> tuple[int, int, int]:
    """(head bytes, tail bytes, N) of a cut last_output."""
    m = re.fullmatch(r"(.*)\n\[\.\.\. (\d+) bytes omitted \.\.\.\]\n(.*)", text, re.S)
    assert m is not None
    return len(m[1].encode()), len(m[3].encode()), int(m[2])


def test_worked_example_lines() -> None:
    warning = "Warning: [blastn] Query_{:03d}: low-complexity regions were masked"
    error = "BLAST Database error: No alias or index file found for nucleotide database [core_nt]"
    parts = ["--- blastn-batch-core-nt-job-7-abc12/blast ---"]
    parts += [warning.format(i) for i in range(1, 201)] + [error, "[exit code 2]"]
    s = "\n".join(parts)
    out, truncated = last_output(s)
    assert truncated
    head, tail, omitted = _parts(out)
    text = section(7).split("**Worked example: lines.**", 1)[1].split("**Worked example:", 1)[0]
    assert f"`{warning.format(1)}`" in text and f"`{error}`" in text
    assert f"({len(warning.format(1))} bytes each)" in text and f"({len(error)} bytes)" in text
    assert f"S has {len(s.encode()):,} bytes" in text
    assert f"**{head:,} bytes**" in text and f"**{tail:,} bytes**" in text and f"**{omitted:,}**" in text
    assert f"`last_output` has {head:,} + 30 + {tail:,} = {len(out.encode()):,} bytes" in text
    # The block shows the result, with "..." standing for runs of warnings.
    (block,) = fenced(text)
    shown = [line for line in block.splitlines() if not line.startswith("...")]
    lines = out.split("\n")
    at = [lines.index(line) for line in shown]
    assert at == sorted(at) and at[0] == 0 and at[-1] == len(lines) - 1
    marker = shown.index(f"[... {omitted} bytes omitted ...]")
    assert at[marker - 1] + 1 == at[marker] == at[marker + 1] - 1


def test_worked_example_character_boundary() -> None:
    s = "--- pod-a/blast ---\n" + "é" * 3999 + "!"
    out, truncated = last_output(s)
    assert truncated
    head, tail, omitted = _parts(out)
    text = section(7).split("**Worked example: a character boundary.**", 1)[1]
    assert f": {len(s.encode()):,} bytes." in text
    assert f"**{head:,} bytes**" in text and f"**{tail:,} bytes**" in text
    assert f"{out.rsplit(chr(10), 1)[1].count('é'):,} × `é` and `!`" in text
    assert f"**{omitted:,}**: `last_output` is the header, `\\n[... {omitted} bytes omitted ...]\\n`" in text


def _examples() -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    batches = [json.loads(b) for b in fenced(section(4), "json")]
    (chunk,) = [json.loads(b) for b in fenced(section(6), "json")]
    (answer,) = [json.loads(b) for b in fenced(section(7), "json") if '"complete"' in b]
    return batches, chunk, answer


def test_example_batches_are_valid_and_their_offsets_add_up() -> None:
    batches, _, _ = _examples()
    assert len(batches) == 2
    for b in batches:
        assert valid_job_id(b["job_id"]) and valid_k8s_name(b["pod"]) and valid_k8s_name(b["container"])
        assert valid_phase(b["phase"])
    first, second = batches
    last = first["events"][-1]
    for ev, nxt in zip(first["events"], first["events"][1:], strict=False):
        assert nxt["off"] == ev["off"] + len(ev["line"].encode()) + 1
    drop = second["dropped"]
    assert drop["off"] == last["off"] + len(last["line"].encode()) + 1
    assert second["events"][0]["off"] == drop["off"] + drop["bytes"]


def test_examples_of_sections_4_6_and_7_agree() -> None:
    batches, chunk, answer = _examples()
    first, second = batches
    drop = second["dropped"]
    assert f"\n{dropped_marker(drop['lines'], drop['bytes'])}\n" in section(4)
    expected_lines = [ev["line"] for ev in first["events"]]
    expected_lines.append(dropped_marker(drop["lines"], drop["bytes"]))
    expected_lines += [ev["line"] for ev in second["events"]]
    assert [ev["line"] for ev in chunk["events"]] == expected_lines
    step = answer["steps"][first["phase"]]
    summary = "\n".join([f"--- {first['pod']}/{first['container']} ---", *expected_lines,
                         f"[exit code {second['exit_code']}]"])
    assert step["last_output"] == last_output(summary)[0] == summary
    assert step["lines"] == len(first["events"]) + len(second["events"])
    assert step["omitted_lines"] == drop["lines"]
    assert step["containers"][0]["exit_code"] == second["exit_code"]


def test_token_example_follows_the_formula() -> None:
    text = section(8)
    m = re.search(r"`BLAST_LOGS_SECRET=([^`]+)` and job\s+`([^`]+)`", text)
    assert m is not None
    secret, job_id = m[1], m[2]
    mac = hmac.new(secret.encode(), ("ingest:" + job_id).encode(), hashlib.sha256).digest()
    token = job_id + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    assert f"\n{token}\n" in text


@cache
def _source_text() -> str:
    """Everything the programs and their deployment are made of (not tests, not docs)."""
    skip = {"tests", "docs", "node_modules"}
    out = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in skip]
        for name in files:
            if name.endswith((".py", ".sh", ".yaml", ".yml")) or name.startswith("Dockerfile"):
                out.append(Path(folder, name).read_text(encoding="utf-8", errors="replace"))
    return "\n".join(out)


def test_fixed_configuration_names_are_in_section_8() -> None:
    table = section(8).split("### Tokens", 1)[0]
    assert set(re.findall(r"`(BLAST_LOGS_[A-Z0-9_]+)`", table)) == FIXED_NAMES


@pytest.mark.parametrize("name", sorted(set(re.findall(r"BLAST_LOGS_[A-Z0-9_]*[A-Z0-9]", DOC.read_text("utf-8")))))
def test_every_configuration_name_exists_in_the_code(name: str) -> None:
    source = _source_text()
    suffix = name.removeprefix("BLAST_LOGS_")
    # The aggregator spells most of its names as the suffix after a shared prefix.
    assert name in source or f'"{suffix}"' in source, f"{name} is in docs/protocol.md but not in the code"
