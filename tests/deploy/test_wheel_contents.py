"""The one wheel both images install holds every module of every package, subpackages included."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from paths import ROOT

PACKAGES = ("blastlogs", "shipper", "aggregator", "blastlogs_tools")


@pytest.mark.timeout(180)
def test_the_wheel_holds_every_module_and_nothing_else(tmp_path: Path) -> None:
    # Built from a copy of the sources so a stale build/ folder in the tree cannot hide a gap.
    src = tmp_path / "src"
    ignore = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for rel in filter(None, ignore.decode().split("\0")):
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            (src / rel).write_bytes((ROOT / rel).read_bytes())
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                           "-w", str(tmp_path / "wheels"), str(src)], capture_output=True, text=True, timeout=170)
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = (tmp_path / "wheels").glob("*.whl")
    in_wheel = {n for n in zipfile.ZipFile(wheel).namelist() if n.endswith((".py", ".sh"))}
    in_tree = {str(p.relative_to(src)) for pkg in PACKAGES for p in (src / pkg).rglob("*")
               if p.suffix in (".py", ".sh")}
    assert in_wheel == in_tree
