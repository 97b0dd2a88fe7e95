"""`blast-log-aggregator logs` against two real aggregator processes on one store (local; Azurite when
marked): stored lines, filters, errors, and `-f` through a proxy that cuts the connection mid-stream,
while batches land on the other replica."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from agg_helpers import JOB, POD, batch, events, ingest_headers
from conftest import TEST_SECRET

from aggregator.auth import job_token, read_token

POD2 = "blastn-batch-job-8-xyz99"


class CuttingProxy:
    """Forwards TCP to `port`; the first `cuts` connections are closed after `after` bytes came back."""

    def __init__(self, port: int, after: int, cuts: int) -> None:
        self.port = port
        self.after = after
        self.cuts = cuts
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        cut = self.connections <= self.cuts
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.port)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, limit: int | None) -> None:
            sent = 0
            try:
                while data := await src.read(4096):
                    if limit is not None and sent + len(data) >= limit:
                        dst.write(data[: max(0, limit - sent)])
                        break
                    dst.write(data)
                    sent += len(data)
                    await dst.drain()
            except OSError:
                pass
            for w in (writer, up_w):
                w.close()

        await asyncio.gather(pump(reader, up_w, None), pump(up_r, writer, self.after if cut else None))

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


async def post(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> None:
    async with session.post(url + "/v1/ingest", data=orjson.dumps(body), headers=ingest_headers()) as r:
        assert r.status == 200, await r.text()


async def logs(url: str, *args: str, token: str | None = None, env: dict[str, str] | None = None,
               ) -> asyncio.subprocess.Process:
    e = {**os.environ, "BLAST_LOGS_TOKEN": token or read_token(TEST_SECRET, JOB), **(env or {})}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "aggregator.cli", "logs", JOB, "--url", url, *args, env=e,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def run(url: str, *args: str, **kw: Any) -> tuple[int, list[str], str]:
    proc = await logs(url, *args, **kw)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode().splitlines(), err.decode()


def replicas(start_aggregator: Any, kit: Any) -> tuple[Any, Any]:
    return (start_aggregator(kit.url, **kit.aggregator_env()), start_aggregator(kit.url, **kit.aggregator_env()))


async def test_stored_lines_filters_and_errors(start_aggregator: Any, kit: Any, tmp_path: Path) -> None:
    a, b = replicas(start_aggregator, kit)
    async with aiohttp.ClientSession() as s:
        await post(s, a.url, batch(seq=0, evs=events(range(0, 30, 10)), eof=True, exit_code=0))
        await post(s, a.url, batch(pod=POD2, container="results-export", seq=0, evs=events([0, 10], prefix="x"),
                                   eof=True))
    code, lines, err = await run(b.url)
    assert code == 0, err
    # results-export feeds two phases: printed once without --phase.
    assert lines == ["x 0", "x 10", "line 0", "line 10", "line 20"]
    code, lines, _ = await run(b.url, "--phase", "running", "--prefix", "--tail", "3")
    assert lines == [f"{POD}/blast line 20", f"{POD2}/results-export x 0", f"{POD2}/results-export x 10"]
    code, lines, _ = await run(b.url, "--phase", "running", "--container", "results-export", "--since", "1h")
    assert (code, lines) == (0, [])
    code, lines, _ = await run(b.url, "--source", "chunks")
    assert code != 0  # not finalized: no chunks yet
    code, lines, _ = await run(b.url, "--source", "staging", "--container", "blast")
    assert (code, lines) == (0, ["line 0", "line 10", "line 20"])
    token_file = tmp_path / "token"
    token_file.write_text(read_token(TEST_SECRET, JOB) + "\n")
    code, lines, _ = await run(b.url, "--pod", POD2, "--token-file", str(token_file), token="ignored")
    assert (code, lines) == (0, ["x 0", "x 10"])
    for token, what in ((job_token(TEST_SECRET, JOB), "may not read"), ("elb-123.bad", "refused")):
        code, lines, err = await run(b.url, token=token)
        assert code != 0 and lines == [] and what in err and len(err.strip().splitlines()) == 1, err
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "aggregator.cli", "logs", "elb-nope", "--url", b.url,
        env={**os.environ, "BLAST_LOGS_TOKEN": read_token(TEST_SECRET, "elb-nope")},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err_b = await proc.communicate()
    assert proc.returncode != 0 and out == b"" and b"unknown job" in err_b


async def test_follow_resumes_after_cut_connections_without_repeats_or_gaps(start_aggregator: Any, kit: Any) -> None:
    a, b = replicas(start_aggregator, kit)
    async with aiohttp.ClientSession() as s:
        await post(s, a.url, batch(seq=0, evs=events(range(0, 300))))
        await post(s, a.url, batch(pod=POD2, seq=0, evs=events(range(0, 100), prefix="p2")))
        proxy = CuttingProxy(int(b.url.rsplit(":", 1)[1]), after=6000, cuts=2)
        port = await proxy.start()
        proc = await logs(f"http://127.0.0.1:{port}", "-f", "--prefix")
        assert proc.stdout is not None
        got: list[str] = []

        async def read_until(n: int) -> None:
            while len(got) < n:
                line = await asyncio.wait_for(proc.stdout.readline(), 30)  # type: ignore[union-attr]
                assert line, "logs -f ended early"
                got.append(line.decode().rstrip("\n"))

        await read_until(400)
        # New batches land on the other replica while the follower is connected (through the proxy) to b.
        await post(s, a.url, batch(seq=1, evs=events(range(300, 320))))
        await read_until(420)
        await post(s, a.url, batch(seq=2, evs=events([320]), eof=True, exit_code=0))
        await post(s, a.url, batch(pod=POD2, seq=1, evs=[], eof=True, exit_code=1))
        rest, err = await asyncio.wait_for(proc.communicate(), 30)
        await proxy.stop()
    got += rest.decode().splitlines()
    assert proc.returncode == 0, err
    assert proxy.connections >= 3  # it was cut twice and came back
    want = [f"{POD}/blast line {i}" for i in range(300)] + [f"{POD2}/blast p2 {i}" for i in range(100)]
    # The backlog in artifact order, then the follow: every line once, none missing.
    assert sorted(got[:400]) == sorted(want) and len(got[:400]) == 400
    assert got[400:] == [f"{POD}/blast line {i}" for i in range(300, 321)]


def test_token_read_prints_the_read_token(monkeypatch: Any, capsys: Any) -> None:
    from aggregator.cli import main

    monkeypatch.setenv("BLAST_LOGS_SECRET", "s3cret")
    assert main(["token", "--read", "elb-123"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == read_token("s3cret", "elb-123") != job_token("s3cret", "elb-123")
    assert printed.startswith("elb-123.") and "=" not in printed
