"""The read routes (docs/protocol.md section 10) on make_app over a real store (local; Azurite when
marked): tokens of every kind, pages before and after finalize, filters, cursors, streams, follow."""

from __future__ import annotations

import asyncio
import base64
import zlib
from typing import Any

import orjson
import pytest
from agg_helpers import JOB, POD, admin_headers, batch, dumps, events, ingest_headers
from conftest import TEST_ADMIN_TOKEN, TEST_SECRET

from aggregator.app import RUNTIME
from aggregator.auth import job_token, read_token
from aggregator.follow import decode_marks, encode_marks
from aggregator.logs_api import READ_HANDLERS

LOGS = f"/v1/jobs/{JOB}/logs"
STREAMS = f"/v1/jobs/{JOB}/streams"
POD2 = "blastn-batch-job-8-xyz99"


def reader(job_id: str = JOB) -> dict[str, str]:
    return {"Authorization": f"Bearer {read_token(TEST_SECRET, job_id)}"}


async def ingest(client: Any, body: dict[str, Any]) -> None:
    r = await client.post("/v1/ingest", data=dumps(body), headers=ingest_headers())
    assert r.status == 200, await r.text()


async def fill(client: Any, *, eof: bool = True) -> None:
    """Two blast pods and a results-export container (it feeds two phases), with a dropped report."""
    await ingest(client, batch(seq=0, evs=events(range(0, 50, 10), ts=1000.0)))
    await ingest(client, batch(seq=1, evs=events(range(50, 100, 10), ts=1000.0), eof=eof, exit_code=0,
                               dropped={"off": 45, "lines": 2, "bytes": 5}))
    await ingest(client, batch(pod=POD2, seq=0, evs=events(range(0, 30, 10), ts=999.0, prefix="p2"), eof=eof,
                               exit_code=2))
    await ingest(client, batch(container="results-export", seq=0, evs=events(range(0, 20, 10), ts=1001.0,
                                                                                prefix="export"), eof=eof))


async def get_lines(client: Any, query: str = "", headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    r = await client.get(LOGS + query, headers=headers or reader())
    assert r.status == 200, await r.text()
    return [orjson.loads(x) for x in (await r.read()).splitlines()]


async def test_tokens_of_every_kind_on_every_read_route(serve: Any) -> None:
    client = await serve()
    await fill(client)
    view = f"/v1/jobs/{JOB}/view"
    for path in (LOGS, STREAMS):
        assert (await client.get(path, headers=reader())).status == 200
        assert (await client.get(path, headers=admin_headers())).status == 200
        job = {"Authorization": f"Bearer {job_token(TEST_SECRET, JOB)}"}
        assert (await client.get(path, headers=job)).status == 403
        assert (await client.get(path, headers=reader("elb-other"))).status == 403
        assert (await client.get(path, headers={"Authorization": "Bearer nope.nope"})).status == 401
        assert (await client.get(path)).status == 401
        assert (await client.get(path + "?follow=1", headers=ingest_headers())).status == 403
    # The read token is never valid for ingest or finalize.
    r = await client.post("/v1/ingest", data=dumps(batch(seq=9)), headers={**reader(), "Content-Type": "application/json"})
    assert r.status == 403
    r = await client.post(f"/v1/jobs/{JOB}/finalize", headers=reader())
    assert r.status == 403
    # The viewer page holds no job data: no token needed, never a token in its URL.
    r = await client.get(view)
    assert r.status == 200 and "text/html" in r.headers["Content-Type"]
    assert TEST_ADMIN_TOKEN not in await r.text()


async def test_unknown_job_is_404_and_bad_queries_400(serve: Any) -> None:
    client = await serve()
    await fill(client)
    r = await client.get("/v1/jobs/elb-none/logs", headers=reader("elb-none"))
    assert r.status == 404
    for q in ("?phase=Bad", "?pod=UPPER", "?limit=0", "?limit=x", "?tail=-1", "?since=yesterday", "?format=xml",
              "?cursor=!!!", "?source=disk", "?follow=maybe"):
        r = await client.get(LOGS + q, headers=reader())
        assert r.status == 400, q
    r = await client.get(LOGS + "?follow=1", headers={**reader(), "Last-Event-ID": "garbage"})
    assert r.status == 400


async def test_before_and_after_finalize_the_same_lines(serve: Any) -> None:
    client = await serve()
    await fill(client)
    before = {q: await get_lines(client, q) for q in ("", "?phase=running", "?phase=exporting_results",
                                                     f"?pod={POD2}", "?container=results-export", "?tail=3")}
    r = await client.post(f"/v1/jobs/{JOB}/finalize", headers=admin_headers())
    assert r.status == 200
    after = {q: await get_lines(client, q) for q in before}
    staged = {q: await get_lines(client, q + ("&" if "?" in q else "?") + "source=staging") for q in before}
    assert before == after == staged
    everything = before[""]
    # Phases by name; in a phase, streams by first ts (POD2 first); results-export once (its first phase).
    assert [e["line"] for e in everything][:5] == ["export 0", "export 10", "p2 0", "p2 10", "p2 20"]
    assert sum(1 for e in everything if e["container"] == "results-export") == 2
    assert {e["phase"] for e in everything if e["container"] == "results-export"} == {"exporting_results"}
    assert "[... 2 lines (5 bytes) dropped by the shipper ...]" in [e["line"] for e in everything]
    assert [e["container"] for e in before["?phase=running"]].count("results-export") == 2
    assert [e["line"] for e in before["?tail=3"]] == [e["line"] for e in everything[-3:]]
    assert all(e["pod"] == POD2 for e in before[f"?pod={POD2}"])


async def test_pages_by_cursor_and_text_format(serve: Any) -> None:
    client = await serve()
    await fill(client)
    for source in ("staging", "chunks"):
        if source == "chunks":
            assert (await client.post(f"/v1/jobs/{JOB}/finalize", headers=admin_headers())).status == 200
        whole = await get_lines(client, f"?source={source}")
        got: list[dict[str, Any]] = []
        query = f"?limit=4&source={source}"
        while True:
            r = await client.get(LOGS + query, headers=reader())
            assert r.status == 200
            got += [orjson.loads(x) for x in (await r.read()).splitlines()]
            if r.headers["X-More"] != "true":
                break
            query = f"?limit=4&source={source}&cursor={r.headers['X-Cursor']}"
        assert got == whole
    r = await client.get(LOGS + f"?format=text&prefix=1&pod={POD2}", headers=reader())
    assert (await r.text()).splitlines() == [f"{POD2}/blast p2 0", f"{POD2}/blast p2 10", f"{POD2}/blast p2 20"]


async def test_since_filter(serve: Any) -> None:
    client = await serve()
    await fill(client)
    got = await get_lines(client, "?since=1000.03")
    assert got and all(e["ts"] >= 1000.03 for e in got)
    assert await get_lines(client, "?since=2001-01-01T00:00:00Z") == []
    assert await get_lines(client, "?since=10m") == []


async def test_streams_state_and_live_last_output(serve: Any) -> None:
    client = await serve()
    await fill(client, eof=False)
    r = await client.get(STREAMS, headers=reader())
    doc = await r.json()
    by = {(s["pod"], s["container"]): s for s in doc["streams"]}
    assert by[(POD, "blast")]["lines"] == 10 and by[(POD, "blast")]["last_position"] == 90
    assert by[(POD, "blast")]["eof"] is False and by[(POD, "blast")]["exit_code"] == 0
    assert by[(POD, "results-export")]["phases"] == ["running", "exporting_results"]
    assert doc["finalized"] is False and doc["complete"] is False
    fin = await (await client.post(f"/v1/jobs/{JOB}/finalize", headers=admin_headers())).json()
    for phase, step in fin["steps"].items():
        assert doc["steps"][phase]["last_output"] == step["last_output"]
        assert doc["steps"][phase]["containers"] == step["containers"]


async def read_sse(resp: Any, stop: Any) -> list[tuple[str, str | None, list[dict[str, Any]]]]:
    """SSE events until `stop(events)` holds."""
    out: list[tuple[str, str | None, list[dict[str, Any]]]] = []
    kind, eid, data = "message", None, []
    while not stop(out):
        raw = await asyncio.wait_for(resp.content.readline(), 10)
        if not raw:
            break
        line = raw.rstrip(b"\n")
        if not line:
            if data or kind != "message":
                out.append((kind, eid, data))
            kind, eid, data = "message", None, []
        elif line.startswith(b"event: "):
            kind = line[7:].decode()
        elif line.startswith(b"id: "):
            eid = line[4:].decode()
        elif line.startswith(b"data: "):
            data.append(orjson.loads(line[6:]))
        elif line.startswith(b": heartbeat"):
            out.append(("heartbeat", None, []))
    return out


def lines_of(evs: list[tuple[str, str | None, list[dict[str, Any]]]]) -> list[str]:
    return [d["line"] for kind, _, data in evs if kind == "log" for d in data]


async def test_follow_backlog_new_batches_heartbeat_end_and_resume(serve: Any) -> None:
    client = await serve()
    handlers = client.server.app[READ_HANDLERS]
    handlers.poll, handlers.heartbeat = 0.05, 0.3
    await ingest(client, batch(seq=0, evs=events(range(0, 30, 10))))
    resp = await client.get(LOGS, headers={**reader(), "Accept": "text/event-stream"})
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
    got = await read_sse(resp, lambda o: len(lines_of(o)) >= 3)
    assert lines_of(got) == ["line 0", "line 10", "line 20"]
    resume_at = got[-1][1]
    assert resume_at is not None
    await ingest(client, batch(seq=1, evs=events(range(30, 50, 10))))
    got = await read_sse(resp, lambda o: len(lines_of(o)) >= 2)
    assert lines_of(got) == ["line 30", "line 40"]
    got = await read_sse(resp, lambda o: any(k == "heartbeat" for k, _, _ in o))
    await ingest(client, batch(seq=2, evs=events([50]), eof=True, exit_code=0))
    got = await read_sse(resp, lambda o: any(k == "end" for k, _, _ in o))
    assert lines_of(got) == ["line 50"]
    resp.close()
    # Resuming from the first event id gives exactly what came after it, then the end.
    r2 = await client.get(LOGS + "?follow=1", headers={**reader(), "Last-Event-ID": resume_at})
    got = await read_sse(r2, lambda o: any(k == "end" for k, _, _ in o))
    assert lines_of(got) == ["line 30", "line 40", "line 50"]
    # tail with follow: only the last lines, then the end (every stream has ended).
    r3 = await client.get(LOGS + "?follow=1&tail=2", headers=reader())
    assert lines_of(await read_sse(r3, lambda o: any(k == "end" for k, _, _ in o))) == ["line 40", "line 50"]


async def test_follow_filters_by_phase(serve: Any) -> None:
    client = await serve()
    client.server.app[READ_HANDLERS].poll = 0.05
    await fill(client)
    r = await client.get(LOGS + "?follow=1&phase=exporting_results", headers=reader())
    got = await read_sse(r, lambda o: any(k == "end" for k, _, _ in o))
    assert lines_of(got) == ["export 0", "export 10"]


def test_marks_round_trip() -> None:
    marks = {(POD, "blast"): 91, (POD2, "results-export"): 0}
    assert decode_marks(encode_marks(marks)) == marks


#: A valid id's shape that inflates to 8 MiB.
BOMB = base64.urlsafe_b64encode(zlib.compress(b"[" + b" " * (8 << 20) + b"]")).decode()


@pytest.mark.parametrize("bad", ["", "x", "eJwLSS0uAQAEXQHB", BOMB])
def test_bad_marks_are_refused(bad: str) -> None:
    from aggregator.errors import BadRequest

    with pytest.raises(BadRequest):
        decode_marks(bad)


async def test_reads_during_a_finalize_that_cleans_staging_miss_nothing(serve: Any) -> None:
    client = await serve(read_concurrency=2)
    pods = [f"pod-{i}" for i in range(8)]
    for pod in pods:
        for seq in range(4):
            await ingest(client, batch(pod=pod, seq=seq, evs=events(range(seq * 10, seq * 10 + 10)), eof=seq == 3))
    want = sorted((p, f"line {o}") for p in pods for o in range(40))

    async def read() -> list[tuple[str, str]]:
        return sorted((e["pod"], e["line"]) for e in await get_lines(client, "?source=staging"))

    fin = asyncio.ensure_future(client.post(f"/v1/jobs/{JOB}/finalize", headers=admin_headers()))
    reads = [await read() for _ in range(6)]
    assert (await fin).status == 200
    reads.append(await read())
    for got in reads:
        assert got == want


async def test_resume_id_of_a_wide_job_fits_in_a_header(serve: Any) -> None:
    client = await serve()
    client.server.app[READ_HANDLERS].poll = 0.05
    await ingest(client, batch(seq=0, evs=events(range(0, 30, 10)), eof=True))
    marks = {(f"blastn-batch-core-nt-job-{i}-x{i:04d}", "blast"): 10**6 + i for i in range(2000)}
    marks[(POD, "blast")] = 2 * 10 + 1  # "line 10" delivered
    last_id = encode_marks(marks)
    assert len(last_id) > 8190  # beyond aiohttp's default header limit
    r = await client.get(LOGS + "?follow=1", headers={**reader(), "Last-Event-ID": last_id})
    assert r.status == 200
    assert lines_of(await read_sse(r, lambda o: any(k == "end" for k, _, _ in o))) == ["line 20"]


async def test_each_piece_id_names_exactly_what_was_delivered(serve: Any, monkeypatch: Any) -> None:
    import aggregator.follow

    monkeypatch.setattr(aggregator.follow, "FOLLOW_PIECE", 2)
    client = await serve()
    client.server.app[READ_HANDLERS].poll = 0.05
    await ingest(client, batch(seq=0, evs=events(range(5))))
    r = await client.get(LOGS + "?follow=1", headers=reader())
    got = await read_sse(r, lambda o: len(lines_of(o)) >= 5)
    assert [len(d) for k, _, d in got if k == "log"] == [2, 2, 1]
    r.close()
    # New lines of two streams land in one poll; resuming from the first piece's id gives the rest once.
    r = await client.get(LOGS + "?follow=1", headers={**reader(), "Last-Event-ID": got[-1][1]})
    await ingest(client, batch(seq=1, evs=events(range(5, 8)), eof=True))
    await ingest(client, batch(pod=POD2, seq=0, evs=events(range(3), prefix="p2"), eof=True))
    got = await read_sse(r, lambda o: len(lines_of(o)) >= 6)
    first = next(eid for k, eid, _ in got if k == "log")
    r.close()
    r = await client.get(LOGS + "?follow=1", headers={**reader(), "Last-Event-ID": first})
    rest = await read_sse(r, lambda o: any(k == "end" for k, _, _ in o))
    assert sorted(lines_of(got)[2:]) == sorted(lines_of(rest))


async def test_a_draining_replica_closes_follows_without_end_and_they_resume(serve: Any) -> None:
    from aggregator.app import start_draining

    client = await serve()
    client.server.app[READ_HANDLERS].poll = 0.05
    await ingest(client, batch(seq=0, evs=events(range(3))))
    r = await client.get(LOGS + "?follow=1", headers=reader())
    got = await read_sse(r, lambda o: len(lines_of(o)) >= 3)
    start_draining(client.server.app)
    rest = await read_sse(r, lambda o: False)  # until the answer ends
    assert not any(k == "end" for k, _, _ in rest)
    client.server.app[RUNTIME].draining = False  # as if another replica took the resume
    await ingest(client, batch(seq=1, evs=events([3]), eof=True))
    r = await client.get(LOGS + "?follow=1", headers={**reader(), "Last-Event-ID": got[-1][1]})
    assert lines_of(await read_sse(r, lambda o: any(k == "end" for k, _, _ in o))) == ["line 3"]
