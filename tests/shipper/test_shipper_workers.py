"""Sanitising worker processes: the same bytes as sanitising in the shipper's own process, state
across reads, a worker that fails or dies, and a worker that never sees the job token."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from array import array
from pathlib import Path

import aiohttp
import orjson
import pytest
from conftest import free_port
from shipper_helpers import ROOT, TOKEN, Recorder, append, eventually, shipping, start_shipper

from shipper.config import ConfigError, load_config
from shipper.prepare import COMPILED, Prepared, prepare
from shipper.reader import Chunk, Cursor, LineReader
from shipper.redact import CLEAN_STATE, marker
from shipper.sanitise import Sanitiser
from shipper.sanitise_worker import (
    REPLY,
    REQUEST,
    STATUS_FAILED,
    STATUS_OK,
    decode_reply,
    encode_request,
    reply_body_size,
)
from shipper.worker_process import auto_workers, available_cpus
from shipper.workers import MAX_QUEUED, SanitiserPool

DATA = ROOT / "tests" / "data"
PEM = [
    "-----BEGIN RSA PRIVATE KEY-----",
    "MIIEpAIBAAKCAQEA1c3Fh0wVvL1r3R7C8c0u0m4tH6pC1cX3yK0bq8r3Hk8mV2bE",
    "q3Vf5Q2xj0pQ7z8c9wF2gkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQDVzcWH",
    "aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789+/==",
    "-----END RSA PRIVATE KEY-----",
]
ENV_ENTRY = ["    - name: DB_PASSWORD", '      value: "hunter2-Very-Secret-99"']


def mixed_log(lines: int, seed: int = 3) -> bytes:
    """Ordinary BLAST lines, secrets, ANSI and carriage returns, long lines, invalid UTF-8, and
    PEM blocks and Kubernetes env entries whose state spans lines."""
    rnd = random.Random(seed)
    ordinary = (DATA / "ordinary-corpus-blast.log").read_bytes().splitlines()
    secrets = [ln.encode() for rec in map(orjson.loads, (DATA / "secrets-corpus.jsonl").read_bytes().splitlines())
               for ln in rec["lines"]]
    out: list[bytes] = []
    while len(out) < lines:
        r = rnd.random()
        if r < 0.01:
            out.extend(x.encode() for x in PEM)
        elif r < 0.02:
            out.extend(x.encode() for x in ENV_ENTRY)
        elif r < 0.06:
            out.append(rnd.choice(secrets))
        elif r < 0.08:
            out.append(b"\x1b[1;31mError:\x1b[0m " + rnd.choice(ordinary))
        elif r < 0.09:
            out.append(b"10%\r50%\r100% " + rnd.choice(ordinary))
        elif r < 0.095:
            out.append(rnd.choice(ordinary) * 60)  # over the 4,000-character cap
        elif r < 0.097:
            out.append(b"bad \xff\xfe bytes " + rnd.choice(ordinary))
        else:
            out.append(rnd.choice(ordinary))
    return b"\n".join(out) + b"\n"


def chunks_of(path: Path, read_size: int) -> list[Chunk]:
    reader = LineReader(path, read_size, 64 * 1024)
    assert reader.open()
    chunks = []
    while (chunk := reader.read()) is not None:
        if chunk.count:
            chunks.append(chunk)
    reader.close()
    return chunks


def same(a: Prepared, b: Prepared) -> None:
    assert a.offs == b.offs
    assert a.events == b.events
    assert a.redactions == b.redactions
    assert a.truncated == b.truncated
    assert a.state == b.state


@pytest.mark.parametrize("read_size", [512, 8192, 256 * 1024])
async def test_workers_give_the_bytes_the_shipper_gives_itself(tmp_path: Path, read_size: int) -> None:
    path = tmp_path / "blast.log"
    path.write_bytes(mixed_log(6000))
    chunks = chunks_of(path, read_size)
    pool = SanitiserPool(2, 4000)
    await pool.start()
    try:
        assert pool.live == 2
        here = Sanitiser()
        state = CLEAN_STATE
        expected: list[Prepared] = []
        for chunk in chunks:  # in order, each from the state the one before ended in
            expected.append(prepare(here, chunk, state))
            state = expected[-1].state
        got: list[Prepared | None] = []
        room = pool.size * MAX_QUEUED
        for i in range(0, len(chunks), room):
            replies = [pool.submit(chunk, p.start) for chunk, p in zip(chunks[i:i + room], expected[i:i + room],
                                                                        strict=True)]
            assert all(r is not None for r in replies)  # the workers had room for these
            if len(replies) == room:
                assert pool.submit(chunks[0], CLEAN_STATE) is None  # and for no more
            got.extend(await asyncio.gather(*[r for r in replies if r is not None]))
    finally:
        await pool.close()
    for g, e in zip(got, expected, strict=True):
        assert g is not None
        same(g, e)
    assert any(e.start != CLEAN_STATE for e in expected) or read_size > 8192  # state did cross reads
    assert sum(e.redactions.get("private_key", 0) for e in expected) > 0


def test_a_worker_answers_a_bad_request_with_a_failure_and_keeps_serving() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "shipper.sanitise_worker", "--max-line-chars", "4000"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdin is not None and proc.stdout is not None
    try:
        # An env name that is not UTF-8, or line ends that do not fit the data, cannot be what the
        # shipper sent: the worker says it failed and serves the next request.
        for bad in (REQUEST.pack(3, 0, 1.0, -1, 1, 1) + b"\xff" + array("q", [4]).tobytes() + b"abc",
                    REQUEST.pack(3, 0, 1.0, -1, 0, 1) + array("q", [9]).tobytes() + b"abc"):
            proc.stdin.write(bad)
            proc.stdin.flush()
            head = proc.stdout.read(REPLY.size)
            assert head[0] == STATUS_FAILED and reply_body_size(head) == 0
            assert decode_reply(head, b"", Chunk(0, 1, 1, 1.0, Cursor(0, 0, 0, 0), b""), CLEAN_STATE) is None
        data = b"password=hunter2-Secret-1\nplain"
        chunk = Chunk(100, 2, 100 + len(data) + 1, 2.0, Cursor(0, 0, 0, 0), data)
        proc.stdin.write(b"".join(encode_request(chunk, CLEAN_STATE)))
        proc.stdin.flush()
        head = proc.stdout.read(REPLY.size)
        assert head[0] == STATUS_OK
        p = decode_reply(head, proc.stdout.read(reply_body_size(head)), chunk, CLEAN_STATE)
        assert p is not None and p.offs == [100, 126]
        assert [orjson.loads(e) for e in p.events] == [
            {"off": 100, "ts": 2.0, "line": f"password={marker('password')}"}, {"off": 126, "ts": 2.0, "line": "plain"}]
        assert p.redactions == {"password": 1}
    finally:
        proc.stdin.close()
        assert proc.wait(10) == 0  # stdin closed: it exits by itself


def children(pid: int) -> list[int]:
    out: list[int] = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        out.extend(int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split())
    return out


async def test_a_pem_block_across_many_small_reads_is_hidden_with_workers(volume: Path, recorder: Recorder) -> None:
    lines = ["before", *PEM, "after", *ENV_ENTRY, "tail"] * 3
    (volume / "logs" / "blast.log").write_text("".join(f"{x}\n" for x in lines))
    async with shipping(volume, [recorder.url], "--read-size", "64", "--sanitise-workers", "2") as shipper:
        await eventually(lambda: len(recorder.lines("blast")) == len(lines), what="every line")
        assert await shipper.stop() == 0
    got = recorder.lines("blast")
    here = Sanitiser()
    assert got == here.lines([x.encode() for x in lines])
    text = "\n".join(got)
    assert "MIIEpAIB" not in text and "hunter2" not in text and "aBcDeFgH" not in text
    assert got.count(marker("private_key")) == len(PEM) * 3


async def test_a_killed_worker_loses_nothing_and_is_replaced(volume: Path, recorder: Recorder) -> None:
    path = volume / "logs" / "blast.log"
    path.write_bytes(b"")
    written: list[bytes] = []
    port = free_port()
    async with shipping(volume, [recorder.url], "--sanitise-workers", "1", "--metrics-port", str(port)) as shipper:
        await shipper.started()
        await eventually(lambda: len(children(shipper.proc.pid)) == 1, what="the worker")
        (worker,) = children(shipper.proc.pid)
        environ = _environ(worker)
        assert TOKEN.encode() not in environ and b"BLAST_LOGS_" not in environ

        async def write(n: int) -> None:
            for _ in range(n):
                block = mixed_log(400, seed=len(written)).split(b"\n")[:-1]
                append(path, b"\n".join(block) + b"\n")
                written.extend(block)
                await asyncio.sleep(0.01)

        await write(20)
        os.kill(worker, signal.SIGKILL)
        await write(20)
        await eventually(lambda: any(c != worker for c in children(shipper.proc.pid)), what="a new worker")
        await write(20)
        await eventually(lambda: len(recorder.lines("blast")) == len(written), what="every line")
        async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/metrics") as resp:
            text = await resp.text()
        assert "blast_logs_shipper_sanitise_worker_restarts_total 1.0" in text
        assert "blast_logs_shipper_sanitise_workers 1.0" in text
        assert 'blast_logs_shipper_chunks_prepared_total{where="worker"}' in text
        assert await shipper.stop() == 0
    assert recorder.lines("blast") == Sanitiser().lines(written)
    assert any(r.get("msg", "").startswith("a sanitising worker exited") for r in shipper.log())


async def test_workers_exit_with_a_killed_shipper(volume: Path, recorder: Recorder) -> None:
    (volume / "logs" / "blast.log").write_bytes(b"hello\n")
    shipper = await start_shipper(volume, [recorder.url], "--sanitise-workers", "2")
    await shipper.started()
    await eventually(lambda: len(children(shipper.proc.pid)) == 2, what="two workers")
    workers = children(shipper.proc.pid)
    shipper.proc.kill()
    await shipper.wait()
    await eventually(lambda: not any(Path(f"/proc/{w}").exists() and "Z" not in _state(w) for w in workers),
                     limit=10, what="the workers to exit")


def _environ(pid: int) -> bytes:
    return Path(f"/proc/{pid}/environ").read_bytes()


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def test_sanitise_workers_setting() -> None:
    env = {"BLAST_LOGS_AGGREGATOR_URL": "http://a:8080", "BLAST_LOGS_JOB_ID": "elb-1", "BLAST_LOGS_POD": "p",
           "BLAST_LOGS_TOKEN": "t"}
    assert load_config([], env).sanitise_workers == 0  # one process unless asked (docs/benchmarks.md, issue 19)
    assert load_config([], {**env, "BLAST_LOGS_SANITISE_WORKERS": "auto"}).sanitise_workers is None
    assert load_config([], {**env, "BLAST_LOGS_SANITISE_WORKERS": "AUTO"}).sanitise_workers is None
    assert load_config(["--sanitise-workers", "0"], {**env, "BLAST_LOGS_SANITISE_WORKERS": "3"}).sanitise_workers == 0
    assert load_config([], {**env, "BLAST_LOGS_SANITISE_WORKERS": "2"}).sanitise_workers == 2
    for bad in ("-1", "two", "1.5"):
        with pytest.raises(ConfigError, match="sanitise-workers"):
            load_config(["--sanitise-workers", bad], env)


@pytest.mark.parametrize(("files", "expected"), [
    ({}, None),  # no cgroup files: the affinity alone
    ({"cpu.max": "max 100000\n"}, None),
    ({"cpu.max": "50000 100000\n"}, 0.5),  # a 500m limit
    ({"cpu.max": "250000 100000\n"}, 2.5),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({"cpu/cpu.cfs_quota_us": "150000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1.5),
    ({"cpu.max": "garbage\n"}, None),
])
def test_available_cpus_follows_the_cgroup_quota(tmp_path: Path, files: dict[str, str], expected: float | None) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    affinity = float(len(os.sched_getaffinity(0)))
    assert available_cpus(tmp_path) == (affinity if expected is None else min(affinity, expected))
    assert auto_workers(0.5) == 0 and auto_workers(1.5) == 0 and auto_workers(2.0) == 1 and auto_workers(16) == 1


async def test_no_workers_by_default(volume: Path, recorder: Recorder) -> None:
    (volume / "logs" / "blast.log").write_bytes(b"password=hunter2-Secret-9\nplain\n")
    async with shipping(volume, [recorder.url]) as shipper:
        await eventually(lambda: len(recorder.lines("blast")) == 2, what="both lines")
        assert children(shipper.proc.pid) == []
        started = next(r for r in shipper.log() if r.get("msg") == "shipper started")
        assert started["sanitise_workers"] == 0
        assert started["compiled_hot_path"] is COMPILED
        assert await shipper.stop() == 0
    assert recorder.lines("blast") == [f"password={marker('password')}", "plain"]


async def test_three_streams_flooding_share_one_worker(volume: Path, recorder: Recorder) -> None:
    """Streams take turns placing when the worker's queue is full (memory stays bounded over all
    of them); every line of every stream arrives once, sanitised as in one process."""
    logs = {name: mixed_log(8000, seed=i).split(b"\n")[:-1]
            for i, name in enumerate(("blast", "results-export", "get-blastdb"))}
    for name, lines in logs.items():
        (volume / "logs" / f"{name}.log").write_bytes(b"\n".join(lines) + b"\n")
    async with shipping(volume, [recorder.url], "--sanitise-workers", "1", "--read-size", "8192") as shipper:
        await eventually(lambda: all(len(recorder.lines(n)) == len(v) for n, v in logs.items()),
                         limit=60, what="every line of every stream")
        assert await shipper.stop() == 0
    for name, lines in logs.items():
        assert recorder.lines(name) == Sanitiser().lines(lines), name
        assert recorder.eof(name)
