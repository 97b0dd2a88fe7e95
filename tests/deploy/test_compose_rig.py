"""The compose rig's pieces that run without podman: the script's syntax and podman config rendering,
and the check's line accounting. The rig itself runs as `scripts/compose-rig.sh` (minutes, root)."""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import re
import resource
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from k8s_templates import load_all
from paths import ROOT

SCRIPT = ROOT / "scripts" / "compose-rig.sh"


def load_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("compose_check", ROOT / "compose" / "check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


check = load_check()


def test_script_parses() -> None:
    proc = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_podman_config_renders_within_the_hard_limits_and_only_once(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {**os.environ, "BLAST_LOGS_RIG_STATE": str(state)}
    prog = (f'source "{SCRIPT}"; mkdir -p "$STATE"; '
            'render compose/podman/containers.conf.in "$CONTAINERS_CONF"; '
            'render compose/podman/storage.conf.in "$CONTAINERS_STORAGE_CONF"; '
            'stat -c %i "$CONTAINERS_STORAGE_CONF"; '
            'render compose/podman/storage.conf.in "$CONTAINERS_STORAGE_CONF"; '
            'stat -c %i "$CONTAINERS_STORAGE_CONF"')
    proc = subprocess.run(["bash", "-c", prog], capture_output=True, text=True, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.split()
    assert first == second, "an unchanged storage.conf must not be rewritten"
    containers = (state / "containers.conf").read_text()
    storage = (state / "storage.conf").read_text()
    assert "@" not in containers + storage
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY:
        assert f'"nofile={hard}:{hard}"' in containers
    assert f'graphroot = "{state}/storage"' in storage
    assert f'network_config_dir = "{state}/networks"' in containers


def test_log_lines_count_an_unterminated_last_line(tmp_path: Path) -> None:
    log = tmp_path / "blast.log"
    log.write_bytes(b"one\n\ntwo\nlast without newline")
    assert check.log_lines(log) == ["one", "", "two", "last without newline"]
    log.write_bytes(b"one\n")
    assert check.log_lines(log) == ["one"]


def test_compare_lines_names_missing_and_duplicated_lines() -> None:
    written = ["a", "b", "b", "c"]
    assert check.compare_lines(written, ["a", "b", "b", "c"]) == (0, 0)
    assert check.compare_lines(written, ["a", "b", "c"]) == (1, 0)
    assert check.compare_lines(written, ["a", "b", "b", "b", "c", "c"]) == (0, 2)


def test_settings_name_a_missing_variable() -> None:
    with pytest.raises(SystemExit, match="CHECK_AGGREGATORS"):
        check.Settings.from_env({})


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is not installed")
def test_rig_builds_each_image_once() -> None:
    """The aggregator image serves four services; the rig builds it once."""
    env = {**os.environ, "BASE_IMAGE": "b", "BLAST_BASE_IMAGE": "d"}
    python = str(ROOT / ".venv" / "bin" / "python")
    if not Path(python).exists():
        pytest.skip("no .venv")
    proc = subprocess.run(["bash", "-c", f'source "{SCRIPT}"; unique_builds'], capture_output=True,
                          text=True, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr
    images = [line.split()[1] for line in proc.stdout.splitlines()]
    assert len(images) == len(set(images))
    assert "blast-logs-aggregator:dev" in images


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is not installed")
def test_rig_resolves_every_service_it_calls_without_dns() -> None:
    """Each URL host a rig service is given (env) is in its /etc/hosts, at the address the callee is pinned to."""
    env = {**os.environ, "BASE_IMAGE": "b", "BLAST_BASE_IMAGE": "d"}
    proc = subprocess.run(["bash", "-c", f'source "{SCRIPT}"; "${{COMPOSE[@]}}" config'], capture_output=True,
                          text=True, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr
    (config,) = load_all(proc.stdout)
    services = config["services"]
    subnet = ipaddress.ip_network(config["networks"]["default"]["ipam"]["config"][0]["subnet"])
    pinned = {name: svc["networks"]["default"]["ipv4_address"] for name, svc in services.items()
              if (svc.get("networks") or {}).get("default")}
    assert all(ipaddress.ip_address(a) in subnet for a in pinned.values())
    assert len(set(pinned.values())) == len(pinned)
    calls = 0
    for name, svc in services.items():
        hosts = svc.get("extra_hosts") or {}
        for value in (svc.get("environment") or {}).values():
            for host in re.findall(r"//([A-Za-z0-9-]+)[:/]", str(value)):
                if host in services:
                    calls += 1
                    assert hosts.get(host) == pinned.get(host), (name, host)
    assert calls >= 5  # aggregators -> azurite, shipper -> aggregators, check -> both


def _layout(root: Path, kind: str) -> Path:
    """A cgroup tree like /sys/fs/cgroup on one kind of machine, as the rig's script reads it."""
    root.mkdir()
    if kind == "v2":
        (root / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids\n")
        return root
    for controller in ("cpu", "memory", "pids", "systemd"):
        (root / controller).mkdir()
    if kind.startswith("hybrid"):
        (root / "unified").mkdir()
        (root / "unified" / "cgroup.controllers").write_text("hugetlb\n" if kind == "hybrid+hugetlb" else "")
    return root


def _rig(prog: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "BLAST_LOGS_RIG_RUNTIME"} | env
    return subprocess.run(["bash", "-c", f'source "{SCRIPT}"; {prog}'], capture_output=True, text=True,
                          cwd=ROOT, env=full_env)


@pytest.mark.parametrize(("kind", "layout", "runtime"), [
    ("hybrid+hugetlb", "hybrid+controllers", "runc"),  # crun 1.8 refuses every container here
    ("hybrid-empty", "v1", "crun"),
    ("v1", "v1", "crun"),
    ("v2", "v2", "crun"),
])
def test_rig_picks_the_oci_runtime_from_the_cgroup_layout(tmp_path: Path, kind: str, layout: str,
                                                          runtime: str) -> None:
    root = _layout(tmp_path / "cgroup", kind)
    proc = _rig(f'cgroup_layout "{root}"; oci_runtime "{root}"')
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [layout, runtime]


def test_rig_runtime_can_be_forced_and_is_rendered_into_containers_conf(tmp_path: Path) -> None:
    root = _layout(tmp_path / "cgroup", "hybrid+hugetlb")
    forced = _rig(f'oci_runtime "{root}"', BLAST_LOGS_RIG_RUNTIME="crun")
    assert forced.stdout.split() == ["crun"]
    bad = _rig(f'oci_runtime "{root}"', BLAST_LOGS_RIG_RUNTIME="kata")
    assert bad.returncode != 0 and "must be crun or runc" in bad.stderr
    state = tmp_path / "state"
    proc = _rig('mkdir -p "$STATE"; RUNTIME=runc; render compose/podman/containers.conf.in "$CONTAINERS_CONF"',
                BLAST_LOGS_RIG_STATE=str(state))
    assert proc.returncode == 0, proc.stderr
    assert '\nruntime = "runc"\n' in (state / "containers.conf").read_text()


def test_rig_on_this_machine_renders_the_runtime_its_layout_needs(tmp_path: Path) -> None:
    """Without RUNTIME set, render asks oci_runtime about the real /sys/fs/cgroup."""
    state = tmp_path / "state"
    proc = _rig('mkdir -p "$STATE"; render compose/podman/containers.conf.in "$CONTAINERS_CONF"; oci_runtime',
                BLAST_LOGS_RIG_STATE=str(state))
    assert proc.returncode == 0, proc.stderr
    unified = Path("/sys/fs/cgroup/unified/cgroup.controllers")
    hybrid_with_controllers = (not Path("/sys/fs/cgroup/cgroup.controllers").exists() and unified.exists()
                               and unified.read_text().strip() != "")
    expected = "runc" if hybrid_with_controllers else "crun"
    assert proc.stdout.split() == [expected]
    assert f'\nruntime = "{expected}"\n' in (state / "containers.conf").read_text()
