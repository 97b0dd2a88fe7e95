"""The shared helpers in `blastlogs/`: atomic writes, the JSON log format, the dropped report."""

from __future__ import annotations

import io
import json
import logging
import os
import sys
from pathlib import Path

import pytest

from blastlogs.atomic import TEMP_PREFIX, sync_filesystem, write_atomic, write_many_atomic
from blastlogs.jsonlog import JsonFormatter, setup_logging
from blastlogs.protocol import Dropped


def test_write_atomic_replaces_whole_with_the_mode_asked_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    assert write_atomic(target, b"old")
    assert write_atomic(target, b"new", mode=0o755)
    assert target.read_bytes() == b"new"
    assert target.stat().st_mode & 0o7777 == 0o755
    assert os.listdir(tmp_path) == ["f.json"]


def test_write_atomic_put_if_absent_keeps_what_is_there(tmp_path: Path) -> None:
    target = tmp_path / "f"
    assert write_atomic(target, b"first", overwrite=False)
    assert not write_atomic(target, b"second", overwrite=False)
    assert target.read_bytes() == b"first"
    assert not [n for n in os.listdir(tmp_path) if n.startswith(TEMP_PREFIX)]


def test_write_atomic_removes_its_temp_file_when_the_rename_fails(tmp_path: Path) -> None:
    target = tmp_path / "a-folder"
    (target / "inside").mkdir(parents=True)  # os.replace cannot put a file over a non-empty folder
    with pytest.raises(OSError):
        write_atomic(target, b"x")
    assert sorted(os.listdir(tmp_path)) == ["a-folder"]


def test_write_many_atomic_writes_each_whole_and_leaves_no_temp_file(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "0.json").write_bytes(b"old")
    items = [(str(tmp_path / d / f"{i}.json"), f"{d}{i}".encode() * (i * 1000)) for d in "ab" for i in range(5)]
    write_many_atomic(items, mode=0o600)
    for path, data in items:
        assert Path(path).read_bytes() == data
        assert Path(path).stat().st_mode & 0o7777 == 0o600
    assert sorted(os.listdir(tmp_path / "a")) == [f"{i}.json" for i in range(5)]
    assert sync_filesystem(str(tmp_path))  # Linux (CI): syncfs is there, so no fsync per file


def test_write_many_atomic_renames_nothing_and_removes_its_temp_files_when_a_write_fails(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "1.json").write_bytes(b"old")
    items = [(str(tmp_path / "a" / "0.json"), b"new"), (str(tmp_path / "a" / "1.json"), b"new"),
             (str(tmp_path / "missing" / "2.json"), b"new")]
    with pytest.raises(FileNotFoundError):
        write_many_atomic(items)
    assert sorted(os.listdir(tmp_path / "a")) == ["1.json"]
    assert (tmp_path / "a" / "1.json").read_bytes() == b"old"


def test_json_log_lines_carry_extra_fields_flat_and_from_a_fields_mapping() -> None:
    out = io.StringIO()
    handler = setup_logging(out, logging.INFO)
    try:
        logging.getLogger("t").warning("hello %s", "you", extra={"stream": "p/c", "fields": {"n": 2}})
    finally:
        logging.getLogger().removeHandler(handler)
    doc = json.loads(out.getvalue())
    assert doc["level"] == "warning" and doc["logger"] == "t" and doc["msg"] == "hello you"
    assert doc["stream"] == "p/c" and doc["n"] == 2 and isinstance(doc["ts"], float)


def test_json_log_line_holds_the_exception_and_values_json_cannot() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    record.path = Path("/x")
    doc = json.loads(JsonFormatter().format(record))
    assert "ValueError: boom" in doc["exc"] and doc["path"] == "/x"


def test_dropped_reports_merge_when_adjacent() -> None:
    assert Dropped(10, 2, 30).merge(Dropped(40, 1, 5)) == Dropped(10, 3, 35)
