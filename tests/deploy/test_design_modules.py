"""docs/design.md against the tree: its module tables name every module there is and no other, and
each package imports only what its "may import" column and its extra in pyproject.toml allow.

Modules are named in the tables relative to their package (`storage/local.py`); an `__init__.py`
that holds only its docstring needs no row (the package's own row describes it).
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

import pytest
from paths import ROOT

DESIGN = ROOT / "docs" / "design.md"
PACKAGES = ("blastlogs", "shipper", "aggregator", "blastlogs_tools")

#: The third-party modules each package may import (the "may import" column), and the
#: pyproject.toml dependency list that must provide each: "base" or the name of an extra.
MAY_IMPORT: dict[str, dict[str, str]] = {
    "blastlogs": {},
    "shipper": {"orjson": "base", "ahocorasick_rs": "base", "prometheus_client": "base"},
    "aggregator": {"orjson": "base", "prometheus_client": "base", "aiohttp": "aggregator", "yarl": "aggregator",
                   "azure": "aggregator", "ruamel": "none"},
    "blastlogs_tools": {"ruamel": "tools", "aiohttp": "tools"},
}
#: Our packages each package may import.
MAY_IMPORT_OURS = {
    "blastlogs": {"blastlogs"},
    "shipper": {"blastlogs", "shipper"},
    "aggregator": {"blastlogs", "aggregator"},
    "blastlogs_tools": {"blastlogs", "blastlogs_tools", "aggregator"},
}
#: Distribution names in pyproject.toml as the module names they install.
DISTRIBUTIONS = {"orjson": "orjson", "ahocorasick-rs": "ahocorasick_rs", "prometheus-client": "prometheus_client",
                 "aiohttp": "aiohttp", "azure-storage-blob": "azure", "azure-identity": "azure",
                 "ruamel.yaml": "ruamel"}
#: Where the Azure SDK may be imported at run time (storage/azure_put.py names its types under TYPE_CHECKING).
AZURE_MODULES = {"aggregator/storage/azure.py"}


def modules_in_tree(package: str) -> set[str]:
    out = set()
    for path in (ROOT / package).rglob("*"):
        if path.suffix not in (".py", ".sh") or "__pycache__" in path.parts:
            continue
        if path.name == "__init__.py" and _docstring_only(path):
            continue
        out.add(path.relative_to(ROOT / package).as_posix())
    return out


def _docstring_only(path: Path) -> bool:
    body = ast.parse(path.read_text(encoding="utf-8")).body
    return all(isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) for node in body)


def modules_in_design() -> dict[str, set[str]]:
    """The first column of each `## ... modules (`package/`)` section's table."""
    text = DESIGN.read_text(encoding="utf-8")
    out: dict[str, set[str]] = {}
    for match in re.finditer(r"^## [^\n]*modules \(`(\w+)/`\)\n(.*?)(?=^## |\Z)", text, re.M | re.S):
        names = re.findall(r"^\| `([^`]+)` \|", match.group(2), re.M)
        out.setdefault(match.group(1), set()).update(names)
    return out


def test_every_package_has_a_module_table() -> None:
    assert sorted(modules_in_design()) == sorted(PACKAGES)


@pytest.mark.parametrize("package", PACKAGES)
def test_the_module_table_names_every_module_and_only_those(package: str) -> None:
    named = modules_in_design().get(package, set())
    tree = modules_in_tree(package)
    assert sorted(tree - named) == [], f"modules of {package}/ missing from docs/design.md"
    assert sorted(n for n in named if not (ROOT / package / n).is_file()) == [], \
        f"docs/design.md names modules {package}/ does not have"


def imports(path: Path, *, at_run_time: bool = True) -> set[str]:
    """The top-level names of the modules `path` imports (absolute imports only; we use no others)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped: set[int] = set()
    if at_run_time:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
                skipped.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    out = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            out.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out - {"__future__"}


def _extras() -> dict[str, set[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    lists = {"base": project["dependencies"], **project["optional-dependencies"]}
    out: dict[str, set[str]] = {}
    for name, requirements in lists.items():
        dists = {re.split(r"[\[<>=~! ;]", r, maxsplit=1)[0] for r in requirements}
        out[name] = {DISTRIBUTIONS[d] for d in dists if d in DISTRIBUTIONS}
    return out


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_imports_only_what_its_row_allows(package: str) -> None:
    ours = set(PACKAGES)
    allowed = set(MAY_IMPORT[package]) | MAY_IMPORT_OURS[package]
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in imports(path):
            if name not in sys.stdlib_module_names:
                found.setdefault(name, set()).add(path.relative_to(ROOT).as_posix())
    assert {n: f for n, f in found.items() if n not in allowed} == {}
    assert set(found) & ours <= MAY_IMPORT_OURS[package]
    assert found.get("azure", set()) <= AZURE_MODULES


@pytest.mark.parametrize("package", PACKAGES)
def test_what_a_package_may_import_comes_with_its_install(package: str) -> None:
    extras = _extras()
    base = extras["base"]
    for module, extra in MAY_IMPORT[package].items():
        if extra == "none" or module == "yarl":  # an optional import; aiohttp brings yarl
            continue
        assert module in extras[extra], (package, module, extra)
        if package == "shipper":
            assert module in base
    if package == "aggregator":
        assert "ruamel" not in extras["aggregator"], "the YAML phase table note in docs/design.md is stale"
