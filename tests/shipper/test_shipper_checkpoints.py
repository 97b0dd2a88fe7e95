"""Checkpoints: round trip, versioning, and atomic replacement under a concurrent reader."""

from __future__ import annotations

import threading
from pathlib import Path

import orjson

from shipper.checkpoints import Checkpoint, Checkpointer, decode_checkpoint, encode_checkpoint


def test_round_trip_and_rejects(tmp_path: Path) -> None:
    cps = Checkpointer(tmp_path / "state")
    assert cps.load("blast") is None
    cp = Checkpoint("blast", dev=1, ino=2, pos=30, base=400, seq=5, shipped=430, eof=True)
    cps.save(cp)
    assert cps.load("blast") == cp and cp.off == 430
    assert orjson.loads(cps.path("blast").read_bytes())["v"] == 1
    assert decode_checkpoint(b"{not json") is None
    assert decode_checkpoint(encode_checkpoint(cp).replace(b'"v":1', b'"v":2')) is None
    assert decode_checkpoint(b'{"v":1,"container":"blast"}') is None
    cps.path("other").write_bytes(encode_checkpoint(cp))  # names another container
    assert cps.load("other") is None
    assert list((tmp_path / "state").glob(".*tmp")) == []


def test_a_reader_only_ever_sees_a_whole_checkpoint(tmp_path: Path) -> None:
    cps = Checkpointer(tmp_path / "state")
    cps.save(Checkpoint("blast", 1, 2, 0, 0, 0, 0))
    stop = threading.Event()
    seen: list[int] = []
    bad: list[bytes] = []

    def reader() -> None:
        while not stop.is_set():
            data = cps.path("blast").read_bytes()
            cp = decode_checkpoint(data)
            if cp is None:
                bad.append(data)
            else:
                seen.append(cp.seq)

    t = threading.Thread(target=reader)
    t.start()
    for seq in range(1, 100):
        cps.save(Checkpoint("blast", 1, 2, seq * 1000, 0, seq, seq * 1000))
    stop.set()
    t.join()
    assert not bad
    assert seen == sorted(seen) and cps.load("blast") == Checkpoint("blast", 1, 2, 99_000, 0, 99, 99_000)
