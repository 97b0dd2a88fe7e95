"""`blast-log-shipper inject|demo` where the tools are not installed (the shipper image): one line
that names the extra to install, and a usage exit status, instead of a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Stands in for an installation without a module: an import of it fails as if it were absent.
_WITHOUT = "import sys; sys.modules[{name!r}] = None; from shipper.cli import main; sys.exit(main({argv!r}))"


def run_without(module: str, argv: list[str]) -> subprocess.CompletedProcess[str]:
    code = _WITHOUT.format(name=module, argv=argv)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("module", "command"), [
    ("blastlogs_tools", "inject"), ("ruamel", "inject"), ("blastlogs_tools", "demo"), ("aggregator", "demo"),
])
def test_a_tool_whose_modules_are_missing_says_which_extra_to_install(module: str, command: str) -> None:
    done = run_without(module, [command, "--help"])
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1
    assert f"blast-log-shipper {command}: not installed here" in done.stderr
    assert "pip install 'blast-logs[tools]'" in done.stderr


def test_the_tools_run_when_installed() -> None:
    done = subprocess.run([sys.executable, "-m", "shipper", "inject", "--help"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and "blast-log-shipper inject" in done.stdout
