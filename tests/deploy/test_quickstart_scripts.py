"""The quick start's install steps: what scripts/demo.sh asks apt, pip and npm for.

The real bootstrap runs against stand-ins for `dpkg`, `apt-get`, `npm` and the virtualenv's
`pip` that record their arguments (installing for real would change this machine)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from paths import ROOT

RECORDER = """#!/bin/sh
echo "$(basename "$0") $*" >> "{log}"
{tail}
"""


def _tool(bindir: Path, name: str, log: Path, tail: str = "exit 0") -> None:
    path = bindir / name
    path.write_text(RECORDER.format(log=log, tail=tail))
    path.chmod(0o755)


@pytest.mark.skipif(os.geteuid() != 0, reason="the bootstrap installs Debian packages only as root")
def test_demo_installs_only_what_the_demo_runs(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    for script in ("bootstrap.sh", "demo.sh"):
        shutil.copy(ROOT / "scripts" / script, repo / "scripts" / script)
    shutil.copy(ROOT / "pyproject.toml", repo / "pyproject.toml")
    shutil.copy(ROOT / "setup.py", repo / "setup.py")
    for source in ("shipper/_hotpath.c", "aggregator/_chunks.c"):
        (repo / source).parent.mkdir(exist_ok=True)
        shutil.copy(ROOT / source, repo / source)
    log = tmp_path / "calls.log"
    bindir = tmp_path / "bin"
    bindir.mkdir()
    _tool(bindir, "dpkg", log, "exit 1")  # every package is missing
    _tool(bindir, "apt-get", log)
    _tool(bindir, "npm", log)
    # `python3 -m venv .venv` makes a venv whose pip and shipper record their calls.
    venv_tools = tmp_path / "venv-bin"
    venv_tools.mkdir()
    for name in ("pip", "python", "blast-log-shipper"):
        _tool(venv_tools, name, log)
    _tool(bindir, "python3", log, f'mkdir -p "{repo}/.venv" && cp -a "{venv_tools}" "{repo}/.venv/bin"')
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run(["bash", str(repo / "scripts" / "demo.sh")], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    calls = log.read_text().splitlines()
    installs = [c for c in calls if c.startswith("apt-get install")]
    assert len(installs) == 1 and installs[0].split()[-1] == "ncbi-blast+", calls
    assert not any(pkg in installs[0] for pkg in ("busybox", "docker-compose", "podman"))
    pip = [c for c in calls if c.startswith("pip install")]
    assert len(pip) == 1 and pip[0].split()[-1] == ".[tools]" and "-e" in pip[0].split(), calls
    assert not any(c.startswith("npm") for c in calls), "the demo needs no Azurite"
    assert calls[-1] == "blast-log-shipper demo"
