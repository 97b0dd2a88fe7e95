"""Proof under fire (issue 5): real Azurite, two aggregator replicas, three pods with shippers, real
BLAST+, faults injected; every written line must be stored exactly once. Reduced sizes (rig.scenarios.CI);
bench/reliability.py runs the same scenarios at full size."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from rig.accounting import compare_lines, split_log
from rig.procs import azurite_binary
from rig.scenarios import CI, SCENARIOS, run_scenario, table
from rig.topology import Rig

pytestmark = [pytest.mark.slow, pytest.mark.azure]


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    if azurite_binary() is None or not (shutil.which("blastn") and shutil.which("makeblastdb")):
        pytest.skip("needs azurite-blob and ncbi-blast+ (scripts/bootstrap.sh)")
    with Rig(Path(tmp_path_factory.mktemp("rig"))) as r:
        yield r


@pytest.mark.parametrize("number", sorted(SCENARIOS))
def test_scenario(rig: Rig, number: int) -> None:
    result = run_scenario(rig, number, CI)
    print(table([result]))
    print(result.story())
    assert result.ok, f"scenario {number} ({result.title}), job {result.job_id}:\n{result.failures()}\n{result.story()}"
    assert result.lost == result.duplicated == result.invented == 0


def test_accounting_counts_loss_duplication_invention_and_markers() -> None:
    written = ["a", "b", "", "", "c"]
    assert compare_lines(written, written).clean
    c = compare_lines(written, ["a", "a", "", "c", "zzz", "[... 2 lines omitted ...]"])
    assert (c.lost, c.duplicated, c.invented, c.markers, c.marker_lines) == (2, 1, 1, 1, 2)
    assert not compare_lines(written, ["b", "a", "", "", "c"]).in_order
    assert split_log(b"x\n\ny") == ["x", "", "y"]
    assert split_log(b"x\n") == ["x"]
