"""Retry policy, backoff, batch encoding and config precedence; delivery against a real server."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest
from shipper_helpers import TOKEN, Recorder

from blastlogs.protocol import MAX_BATCH_BYTES, Dropped
from blastlogs.retry import backoff_delay, parse_retry_after
from shipper.batch import Batch, Identity, encode_batch, encode_event, header_reserve
from shipper.client import AggregatorClient, Verdict, classify
from shipper.config import ConfigError, load_config
from shipper.http import HttpClient
from shipper.metrics import ShipperMetrics
from shipper.reader import Cursor


def test_classify() -> None:
    assert classify(200) is Verdict.OK and classify(204) is Verdict.OK
    assert classify(None) is Verdict.RETRY
    assert all(classify(s) is Verdict.RETRY for s in (408, 429, 500, 502, 503, 504))
    assert classify(413) is Verdict.SPLIT
    assert all(classify(s) is Verdict.REJECT for s in (400, 401, 403, 404, 422))


def test_backoff_is_capped_full_jitter_and_honours_retry_after() -> None:
    assert backoff_delay(0, 0.2, 10, 1.0) == pytest.approx(0.2)
    assert backoff_delay(3, 0.2, 10, 1.0) == pytest.approx(1.6)
    assert backoff_delay(30, 0.2, 10, 1.0) == 10
    assert backoff_delay(30, 0.2, 10, 0.0) == 0
    assert backoff_delay(0, 0.2, 10, 0.5, retry_after=7) == 7
    assert backoff_delay(0, 0.2, 10, 0.5, retry_after=700, retry_after_max=60) == 60
    assert parse_retry_after("3") == 3 and parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412475.0) == pytest.approx(5.0)


def test_batch_encoding_and_split() -> None:
    ident = Identity("elb-1", "pod-a", "blast", "running")
    b = Batch(cursor=Cursor(1, 2, 30, 100), shipped=130, dropped=Dropped(90, 2, 10), eof=True, exit_code=0)
    for off, line in [(100, "a"), (110, "b\"q"), (120, "c")]:
        b.add(off, encode_event(off, 1.5, line))
    body = orjson.loads(encode_batch(ident, 4, b))
    assert body == {"job_id": "elb-1", "pod": "pod-a", "container": "blast", "phase": "running", "seq": 4,
                    "eof": True, "dropped": {"off": 90, "lines": 2, "bytes": 10}, "exit_code": 0,
                    "events": [{"off": 100, "ts": 1.5, "line": "a"}, {"off": 110, "ts": 1.5, "line": "b\"q"},
                               {"off": 120, "ts": 1.5, "line": "c"}]}
    assert b.size == sum(len(e) for e in b.events) + 2
    first, second = b.split()
    assert first.offs == [100] and first.cursor.pos == 10 and first.shipped == 110 and not first.eof
    assert first.dropped == b.dropped and second.dropped is None and second.eof
    assert second.cursor == b.cursor and second.size == len(b.events[1]) + len(b.events[2]) + 1
    assert header_reserve(ident) < 400
    assert orjson.loads(encode_event(5, 0.1, "é\u2028\x00\"")) == {"off": 5, "ts": 0.1, "line": "é\u2028\x00\""}
    empty = orjson.loads(encode_batch(ident, 0, Batch()))
    assert empty["events"] == [] and empty["dropped"] == {"lines": 0, "bytes": 0} and "exit_code" not in empty
    assert MAX_BATCH_BYTES - header_reserve(ident) > 1_000_000


async def test_deliver_fails_over_and_retries() -> None:
    rec = await Recorder(script=[503, "drop", 503]).start()
    try:
        async with HttpClient() as http:
            metrics = ShipperMetrics()
            client = AggregatorClient(http, ("http://127.0.0.1:9", rec.url), TOKEN, timeout=5,
                                      use_gzip=True, backoff_base=0.01, backoff_max=0.05,
                                      retry_after_max=5, reject_backoff=0.05, metrics=metrics)
            body = encode_batch(Identity("elb-1", "p", "c", "running"), 0, Batch())
            t0 = time.monotonic()
            out = await client.deliver(body, "p/c")
            assert out.verdict is Verdict.OK and out.url == rec.url
            assert [a for _, a, _ in rec.requests] == [503, "drop", 503, 200]
            assert time.monotonic() - t0 < 5
            assert rec.encodings[-1] == "gzip"
            text = metrics.render().decode()
            assert 'blast_logs_shipper_retries_total{reason="connection"}' in text
            assert 'blast_logs_shipper_retries_total{reason="503"} 2.0' in text
            rec.script = [413]
            assert (await client.deliver(body, "p/c")).verdict is Verdict.SPLIT
    finally:
        await rec.stop()


def test_config_flags_win_over_env(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    env = {"BLAST_LOGS_AGGREGATOR_URL": "http://a:8080/, http://b:8080", "BLAST_LOGS_JOB_ID": "elb-1",
           "BLAST_LOGS_POD": "p", "BLAST_LOGS_TOKEN": "t", "BLAST_LOGS_GRACE": "5",
           "BLAST_LOGS_METRICS_PORT": "0", "BLAST_LOGS_GZIP": "true"}
    cfg = load_config(["--grace", "7", "--pod", "q"], env)
    assert cfg.urls == ("http://a:8080", "http://b:8080") and cfg.grace == 7 and cfg.pod == "q"
    assert cfg.token == "t" and cfg.metrics_port == 0 and cfg.gzip and cfg.phase == "unknown"
    assert "t" not in repr(cfg).split("token")[0] or "token=" not in repr(cfg)
    assert load_config(["--token-file", str(token_file)], env).token == "from-file"
    with pytest.raises(ConfigError, match="BLAST_LOGS_JOB_ID"):
        load_config([], {k: v for k, v in env.items() if k != "BLAST_LOGS_JOB_ID"})
    with pytest.raises(ConfigError, match="GRACE"):
        load_config([], {**env, "BLAST_LOGS_GRACE": "soon"})
    with pytest.raises(ConfigError, match="token"):
        load_config([], {k: v for k, v in env.items() if k != "BLAST_LOGS_TOKEN"})
