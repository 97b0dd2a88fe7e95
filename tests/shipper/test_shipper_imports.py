"""The sidecar's import closure: `blast-log-shipper run` and its sanitising worker, run for real,
import nothing of the aggregator, the deploy-time tools, aiohttp, the Azure SDK or a YAML library,
so the shipper image can leave them out (Dockerfile.shipper removes them).

Every module a process imports is read from `PYTHONPROFILEIMPORTTIME` (`-X importtime`) output,
which Python writes to stderr as each import happens, lazy imports included.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import free_port
from shipper_helpers import Recorder, append, eventually, shipping

from shipper.reader import LineReader
from shipper.redact import CLEAN_STATE
from shipper.sanitise_worker import REPLY, encode_request

#: Top-level packages the sidecar must never import.
FORBIDDEN = frozenset({"aggregator", "blastlogs_tools", "aiohttp", "azure", "ruamel", "yaml"})


def imported(stderr_lines: list[str]) -> set[str]:
    """Top-level names of every module in `-X importtime` lines (`import time: ... | name`)."""
    names = set()
    for line in stderr_lines:
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name and name != "imported package":
                names.add(name.split(".")[0])
    return names


async def test_run_imports_none_of_the_aggregator_tools_aiohttp_azure_or_yaml(
        volume: Path, recorder: Recorder) -> None:
    append(volume / "logs" / "blast.log", b"password=hunter2 and a line\n")
    async with shipping(volume, [recorder.url], "--sanitise-workers", "1",
                        BLAST_LOGS_METRICS_PORT=str(free_port()), PYTHONPROFILEIMPORTTIME="1") as shipper:
        await shipper.started()
        await eventually(lambda: len(recorder.lines("blast")) == 1, what="the line shipped")
        assert await shipper.stop() == 0
    lines = shipper.log_path.read_text(errors="replace").splitlines()
    names = imported(lines)
    assert {"shipper", "blastlogs", "orjson", "prometheus_client", "ahocorasick_rs"} <= names
    assert not names & FORBIDDEN, sorted(names & FORBIDDEN)


def test_the_sanitising_worker_imports_none_of_them(tmp_path: Path) -> None:
    log = tmp_path / "blast.log"
    log.write_bytes(b"one\ntoken=abc two\nthree\n")
    reader = LineReader(log, 1 << 16, 1 << 16)
    assert reader.open()
    chunk = reader.read()
    reader.close()
    assert chunk is not None and chunk.count == 3
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLAST_LOGS_")}
    env["PYTHONPROFILEIMPORTTIME"] = "1"
    done = subprocess.run([sys.executable, "-m", "shipper.sanitise_worker", "--max-line-chars", "4000"],
                          input=b"".join(encode_request(chunk, CLEAN_STATE)), capture_output=True,
                          env=env, timeout=60)
    assert done.returncode == 0
    assert len(done.stdout) > REPLY.size  # it answered the request: the whole path ran
    names = imported(done.stderr.decode(errors="replace").splitlines())
    assert {"shipper", "blastlogs", "orjson", "ahocorasick_rs"} <= names
    assert not names & FORBIDDEN, sorted(names & FORBIDDEN)
