"""Finalize's pure logic against docs/protocol.md sections 5-7: merge, retention, markers, chunks, summaries."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator.artifacts import (
    Artifacts,
    TextSpan,
    _join_spans,
    _last_output_parts,
    build_artifacts,
    chunk_body,
    keep_longer_existing,
    last_output,
    summary_body,
)
from aggregator.model import Dropped, StoredBatch

JOB = "elb-1"


def batch(
    events: Sequence[tuple[int, float, str]] = (),
    *,
    pod: str = "pod-a",
    container: str = "blast",
    phase: str = "running",
    seq: int = 0,
    eof: bool = False,
    exit_code: int | None = None,
    dropped: Dropped | None = None,
) -> StoredBatch:
    return StoredBatch(JOB, pod, container, phase, seq, eof, exit_code, dropped, tuple(events))


def numbered(n: int, *, start: int = 0, ts0: float = 100.0, prefix: str = "line") -> list[tuple[int, float, str]]:
    """Lines `prefix-i` for i in [start, start+n); each off is 10*i, ts is ts0 + i."""
    return [(10 * i, ts0 + i, f"{prefix}-{i}") for i in range(start, start + n)]


def texts(art: Artifacts, phase: str) -> list[str]:
    return [e["line"] for chunk in art.phases[phase] for e in chunk]


def events(art: Artifacts, phase: str) -> list[dict[str, Any]]:
    return [e for chunk in art.phases[phase] for e in chunk]


# --- merging copies ---------------------------------------------------------------------------


def test_duplicate_and_reformed_batches_give_each_event_once() -> None:
    lines = numbered(50)
    batches = [
        batch(lines[0:20], seq=0),
        batch(lines[0:20], seq=3),  # re-sent after a restart
        batch(lines[10:40], seq=4),  # re-formed with other boundaries
        batch(lines[30:50], seq=5, eof=True),
        batch(lines[45:46], seq=6),
    ]
    art = build_artifacts(batches)
    assert texts(art, "running") == [f"line-{i}" for i in range(50)]
    assert art.steps["running"]["lines"] == 50
    assert art.steps["running"]["omitted_lines"] == 0


def test_lowest_ts_then_lowest_seq_copy_is_kept() -> None:
    batches = [
        batch([(0, 5.0, "late read"), (10, 7.0, "b-seq2")], seq=2),
        batch([(0, 4.0, "first read"), (10, 7.0, "b-seq9")], seq=9),
        batch([(10, 7.0, "b-seq1"), (20, 9.0, "z")], seq=1),
    ]
    for order in (batches, batches[::-1]):
        art = build_artifacts(order)
        evs = events(art, "running")
        assert [(e["ts"], e["line"]) for e in evs] == [(4.0, "first read"), (7.0, "b-seq1"), (9.0, "z")]


# --- dropped reports --------------------------------------------------------------------------


def test_dropped_report_becomes_one_marker_at_its_place() -> None:
    drop = Dropped(off=25, lines=3, bytes=120)
    batches = [
        batch(numbered(3), seq=0),  # offs 0, 10, 20
        batch(numbered(2, start=3), seq=1, dropped=drop),  # offs 30, 40
        batch(numbered(2, start=3), seq=2, dropped=drop),  # the same report again
        batch([], seq=3, dropped=Dropped(off=50, lines=0, bytes=0)),  # nothing left out
    ]
    art = build_artifacts(batches)
    evs = events(art, "running")
    marker = "[... 3 lines (120 bytes) dropped by the shipper ...]"
    assert [e["line"] for e in evs] == ["line-0", "line-1", "line-2", marker, "line-3", "line-4"]
    assert evs[3] == {"ts": 102.0, "pod": "pod-a", "container": "blast", "line": marker}
    assert list(evs[3]) == ["ts", "pod", "container", "line"]
    step = art.steps["running"]
    assert (step["lines"], step["omitted_lines"]) == (5, 3)


def test_marker_ts_at_stream_start_end_and_without_lines() -> None:
    art = build_artifacts(
        [
            batch(numbered(2, start=1), seq=1, dropped=Dropped(0, 1, 9)),
            batch([], seq=2, dropped=Dropped(off=90, lines=4, bytes=40)),
            batch([], pod="pod-b", seq=0, dropped=Dropped(off=0, lines=2, bytes=5)),
        ]
    )
    evs = events(art, "running")
    assert [(e["pod"], e["ts"], e["line"]) for e in evs] == [
        ("pod-a", 101.0, "[... 1 lines (9 bytes) dropped by the shipper ...]"),  # ts of the next line
        ("pod-a", 101.0, "line-1"),
        ("pod-a", 102.0, "line-2"),
        ("pod-a", 102.0, "[... 4 lines (40 bytes) dropped by the shipper ...]"),
        ("pod-b", 0.0, "[... 2 lines (5 bytes) dropped by the shipper ...]"),  # no line at all
    ]
    assert art.steps["running"]["omitted_lines"] == 7


def test_differing_copies_of_one_report_resolve_to_lowest_seq() -> None:
    batches = [
        batch(numbered(1, start=5), seq=7, dropped=Dropped(0, 9, 900)),
        batch(numbered(1, start=5), seq=4, dropped=Dropped(0, 8, 800)),
    ]
    for order in (batches, batches[::-1]):
        assert texts(build_artifacts(order), "running")[0] == "[... 8 lines (800 bytes) dropped by the shipper ...]"


# --- head/tail retention ----------------------------------------------------------------------


def test_head_and_tail_are_kept_with_one_omitted_marker() -> None:
    art = build_artifacts([batch(numbered(30), eof=True)], head_lines=5, tail_lines=10)
    evs = events(art, "running")
    assert [e["line"] for e in evs] == (
        [f"line-{i}" for i in range(5)] + ["[... 15 lines omitted ...]"] + [f"line-{i}" for i in range(20, 30)]
    )
    assert evs[5]["ts"] == 104.0
    step = art.steps["running"]
    assert (step["lines"], step["omitted_lines"]) == (15, 15)
    assert step["containers"] == [{"pod": "pod-a", "container": "blast", "lines": 15, "exit_code": None}]


def test_drops_around_and_inside_the_omitted_span() -> None:
    drops = [Dropped(off, 1, 7) for off in (5, 45, 55, 145, 175)]
    bs = [batch(numbered(20), seq=0)] + [batch([], seq=1 + i, dropped=d) for i, d in enumerate(drops)]
    # head 5 keeps lines 0-4 (offs 0..40); tail 3 keeps lines 17-19 (offs 170..190).
    art = build_artifacts(bs, head_lines=5, tail_lines=3)
    mk = "[... 1 lines (7 bytes) dropped by the shipper ...]"
    assert texts(art, "running") == [
        "line-0",
        mk,  # off 5
        "line-1",
        "line-2",
        "line-3",
        "line-4",
        mk,  # off 45: before the first omitted line (off 50), stays before the marker
        "[... 12 lines omitted ...]",
        mk,  # off 55: inside the omitted span
        mk,  # off 145: inside the omitted span
        "line-17",
        mk,  # off 175
        "line-18",
        "line-19",
    ]
    step = art.steps["running"]
    assert step["lines"] + step["omitted_lines"] == 20 + 5


def test_zero_head_or_tail() -> None:
    art = build_artifacts([batch(numbered(10))], head_lines=0, tail_lines=2)
    assert texts(art, "running") == ["[... 8 lines omitted ...]", "line-8", "line-9"]
    assert events(art, "running")[0]["ts"] == 108.0
    art = build_artifacts([batch(numbered(10))], head_lines=2, tail_lines=0)
    assert texts(art, "running") == ["line-0", "line-1", "[... 8 lines omitted ...]"]


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(0, 60),
    head=st.integers(0, 20),
    tail=st.integers(0, 20),
    drops=st.lists(st.tuples(st.integers(0, 61), st.integers(0, 5)), max_size=8),
)
def test_every_line_is_retained_or_counted_once(
    n: int, head: int, tail: int, drops: list[tuple[int, int]]
) -> None:
    reports = {10 * pos - 5: lines for pos, lines in drops}  # between lines; a repeated off is one report
    bs = [batch(numbered(n), seq=0)] + [
        batch([], seq=i + 1, dropped=Dropped(off, lines, 3)) for i, (off, lines) in enumerate(reports.items())
    ]
    art = build_artifacts(bs, head_lines=head, tail_lines=tail)
    seen = texts(art, "running")
    kept = [t for t in seen if t.startswith("line-")]
    expected = [f"line-{i}" for i in range(n)]
    if n > head + tail:
        expected = expected[:head] + expected[n - tail :]
    assert kept == expected
    markers = [t for t in seen if t.startswith("[")]
    omitted = [int(t.split()[1]) for t in markers if t.endswith("omitted ...]")]
    dropped = [int(t.split()[1]) for t in markers if t.endswith("shipper ...]")]
    assert omitted == ([n - head - tail] if n > head + tail else [])
    assert sorted(dropped) == sorted(v for v in reports.values() if v > 0)
    step = art.steps["running"]
    assert step["lines"] == len(kept)
    assert step["lines"] + step["omitted_lines"] == n + sum(reports.values())


# --- phases, ordering, chunks -----------------------------------------------------------------


def test_streams_ordered_by_first_ts_then_pod_container_and_chunked() -> None:
    bs = [
        batch(numbered(3, ts0=5.0, prefix="late"), pod="pod-a", container="blast"),
        batch(numbered(4, ts0=3.0, prefix="b-x"), pod="pod-b", container="blast"),
        batch(numbered(2, ts0=3.0, prefix="c-tie"), pod="pod-a", container="results-export"),
        batch(numbered(2, ts0=3.0, prefix="a-tie"), pod="pod-a", container="blast-2", phase="running"),
        batch([], pod="pod-0", container="blast", eof=True),  # no events: last
    ]
    art = build_artifacts(bs, chunk_events=4)
    chunks = art.phases["running"]
    assert [len(c) for c in chunks] == [4, 4, 3]
    order = [(e["pod"], e["container"]) for c in chunks for e in c]
    assert order == (
        [("pod-a", "blast-2")] * 2 + [("pod-a", "results-export")] * 2 + [("pod-b", "blast")] * 4
    ) + [("pod-a", "blast")] * 3
    assert texts(art, "running")[-3:] == ["late-0", "late-1", "late-2"]
    assert [(c["pod"], c["container"], c["lines"]) for c in art.steps["running"]["containers"]] == [
        ("pod-a", "blast-2", 2),
        ("pod-a", "results-export", 2),
        ("pod-b", "blast", 4),
        ("pod-a", "blast", 3),
        ("pod-0", "blast", 0),
    ]
    assert art.steps["running"]["chunks"] == 3


def test_container_feeding_two_phases_appears_in_both() -> None:
    bs = [
        batch(numbered(2, prefix="blast"), container="blast", eof=True, exit_code=0),
        batch(numbered(3, ts0=200.0, prefix="export"), container="results-export", eof=True, exit_code=0),
    ]
    art = build_artifacts(bs)
    assert set(art.phases) == {"running", "exporting_results"}
    assert texts(art, "running") == ["blast-0", "blast-1", "export-0", "export-1", "export-2"]
    assert texts(art, "exporting_results") == ["export-0", "export-1", "export-2"]
    assert art.steps["exporting_results"]["last_output"] == (
        "--- pod-a/results-export ---\nexport-0\nexport-1\nexport-2\n[exit code 0]"
    )
    assert "--- pod-a/results-export ---" in art.steps["running"]["last_output"]


def test_other_containers_use_default_phase_and_stay_out_of_last_output() -> None:
    bs = [
        batch(numbered(1, prefix="db"), pod="setup-1", container="get-blastdb", phase="staging_db", exit_code=0),
        batch(numbered(1, prefix="side"), pod="setup-1", container="helper", phase="unknown", seq=0),
        batch(numbered(1, start=1, prefix="side"), pod="setup-1", container="helper", phase="staging_db", seq=1),
        batch(numbered(2, prefix="warm"), pod="w-1", container="prep", phase="warming_up"),
    ]
    art = build_artifacts(bs)
    assert set(art.phases) == {"staging_db", "warming_up"}
    assert texts(art, "staging_db") == ["db-0", "side-0", "side-1"]
    assert art.steps["staging_db"]["last_output"] == "--- setup-1/get-blastdb ---\ndb-0\n[exit code 0]"
    assert art.steps["warming_up"]["last_output"] == ""
    assert art.steps["warming_up"]["truncated"] is False
    assert art.steps["warming_up"]["lines"] == 2


def test_exit_code_from_highest_seq_batch_carrying_one() -> None:
    bs = [
        batch(numbered(1), seq=3, exit_code=1),
        batch([], seq=4, exit_code=137),
        batch([], seq=5, eof=True),
        batch(numbered(1), pod="pod-b", seq=0),
    ]
    art = build_artifacts(bs)
    assert [(c["pod"], c["exit_code"]) for c in art.steps["running"]["containers"]] == [
        ("pod-a", 137),
        ("pod-b", None),
    ]
    assert art.steps["running"]["last_output"] == "--- pod-a/blast ---\nline-0\n[exit code 137]\n--- pod-b/blast ---\nline-0"


def test_complete_and_incomplete_streams() -> None:
    bs = [
        batch([], pod="pod-z", container="blast"),
        batch(numbered(1), pod="pod-a", container="vmtouch", phase="warming_up", eof=True),
        batch(numbered(1), pod="pod-a", container="blast", seq=0),
        batch([], pod="pod-a", container="blast", seq=1),
    ]
    art = build_artifacts(bs)
    assert art.complete is False
    assert art.incomplete_streams == [{"pod": "pod-a", "container": "blast"}, {"pod": "pod-z", "container": "blast"}]
    art = build_artifacts([*bs, batch([], pod="pod-z", eof=True, seq=1), batch([], eof=True, seq=2)])
    assert (art.complete, art.incomplete_streams) == (True, [])
    assert build_artifacts([]) == Artifacts({}, {}, [], True)


def test_bad_arguments_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="chunk_events"):
        build_artifacts([], chunk_events=0)
    with pytest.raises(ValueError, match="head_lines"):
        build_artifacts([], head_lines=-1)
    other = StoredBatch("elb-2", "p", "blast", "running", 0, False, None, None, ())
    with pytest.raises(ValueError, match="several jobs"):
        build_artifacts([batch(), other])


# --- last_output --------------------------------------------------------------------------------


def test_seven_kb_of_primary_output_is_cut_exactly() -> None:
    # S = header (19 bytes) + "\n" + 70 lines of 99 bytes joined by "\n": 20 + 70*100 - 1 = 7019 bytes.
    # Line i starts at byte 20 + 100*i and its "\n" is at 119 + 100*i.
    # Head window [0, 3072): last "\n" at 3019 (after line 29) -> head = header + lines 0..29.
    # Tail window [3947, 7019): first "\n" at 4019 (after line 39) -> tail = lines 40..69.
    # Omitted: lines 30..39 (10 * 100 bytes, each with its "\n" before line 40) + the "\n" after line 29.
    lines = [f"{i:03d} " + "x" * 95 for i in range(70)]
    art = build_artifacts([batch([(100 * i, 1.0 + i, t) for i, t in enumerate(lines)], pod="pod-a")])
    header = "--- pod-a/blast ---"
    expected = "\n".join([header, *lines[:30]]) + "\n[... 1001 bytes omitted ...]\n" + "\n".join(lines[40:])
    step = art.steps["running"]
    assert step["last_output"] == expected
    assert step["truncated"] is True
    assert last_output("\n".join([header, *lines])) == (expected, True)


def test_short_output_is_kept_whole() -> None:
    text = "x" * 6144
    assert last_output(text) == (text, False)
    assert last_output("") == ("", False)


def test_one_line_longer_than_the_head_window() -> None:
    text = "a" * 4000 + "b" * 4000
    assert last_output(text) == ("a" * 3072 + "\n[... 1856 bytes omitted ...]\n" + "b" * 3072, True)
    # Through build: the head stops at the header's newline, the tail has no newline.
    art = build_artifacts([batch([(0, 1.0, text)], container="vmtouch", pod="w", phase="warming_up")])
    header = "--- w/vmtouch ---"
    assert art.steps["warming_up"]["last_output"] == (
        # S = header + "\n" + 8000 bytes; head = header; N = the "\n" + the first 8000 - 3072 bytes.
        header + f"\n[... {1 + 8000 - 3072} bytes omitted ...]\n" + "b" * 3072
    )


def test_multibyte_characters_are_never_split() -> None:
    # "a" + 3000 * "€" (3 bytes) + "z" = 9002 bytes; characters start at bytes 1 + 3k.
    # Head: byte 3072 is inside a "€" (3072 = 1 + 3*1023 + 2): back to 3070 -> "a" + 1023 "€".
    # Tail window starts at 9002 - 3072 = 5930, inside a "€" (5930 = 1 + 3*1976 + 1): forward to 5932.
    text = "a" + "€" * 3000 + "z"
    expected = "a" + "€" * 1023 + "\n[... 2862 bytes omitted ...]\n" + "€" * 1023 + "z"
    assert last_output(text) == (expected, True)
    assert _last_output_parts([text]) == (expected, True)


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(st.text(alphabet="ab\né€😀", max_size=12), min_size=1, max_size=12))
def test_parts_cut_equals_cut_of_joined_text(parts: list[str]) -> None:
    joined = "\n".join(parts)
    got = _last_output_parts(parts, limit=16, half=8)
    assert got == last_output(joined, limit=16, half=8)
    text, truncated = got
    data = joined.encode()
    if not truncated:
        assert text == joined
        return
    head, _, rest = text.partition("\n[... ")
    n_text, _, tail = rest.partition(" bytes omitted ...]\n")
    hb, tb = head.encode(), tail.encode()
    assert data.startswith(hb) and data.endswith(tb)
    assert len(hb) <= 8 and len(tb) <= 8
    assert int(n_text) == len(data) - len(hb) - len(tb)



@settings(max_examples=300, deadline=None)
@given(blocks=st.lists(st.lists(st.text(alphabet="ab\né€😀", max_size=10), min_size=1, max_size=6),
                       min_size=1, max_size=6))
def test_streams_cut_as_spans_equal_the_cut_of_s(blocks: list[list[str]]) -> None:
    """Finalize keeps only each primary stream's ends (a TextSpan per block); the blocks joined with
    "\n" must still be cut exactly as protocol section 7 cuts the whole S, across block borders."""
    joined = "\n".join("\n".join(parts) for parts in blocks)
    spans = [TextSpan.of(parts, 16) for parts in blocks]
    assert _join_spans(spans, limit=16, half=8) == last_output(joined, limit=16, half=8)


# --- keep_longer_existing ---------------------------------------------------------------------


def test_keep_longer_existing_compares_utf8_bytes() -> None:
    steps = {
        "running": {"last_output": "abcde", "truncated": False, "lines": 1},
        "staging_db": {"last_output": "abcdef", "truncated": True, "lines": 2},
    }
    out = keep_longer_existing(steps, {"running": "ééé", "staging_db": "abcdeX", "warming_up": "zzzzzzzzz"})
    assert out["running"] == {"last_output": "ééé", "truncated": False, "lines": 1}  # 6 bytes > 5
    assert out["staging_db"]["last_output"] == "abcdef"  # equal length: the new one stays
    assert "warming_up" not in out
    assert steps["running"]["last_output"] == "abcde"  # the input is not changed


# --- serialisation and determinism -----------------------------------------------------------


def test_chunk_body_bytes() -> None:
    evs = [{"ts": 1764270000.123, "pod": "p", "container": "blast", "line": "é \"q\""}]
    assert chunk_body("elb-1", "running", 3, evs) == (
        b'{"job_id":"elb-1","phase":"running","seq":3,"events":'
        b'[{"ts":1764270000.123,"pod":"p","container":"blast","line":"\xc3\xa9 \\"q\\""}]}'
    )


def test_summary_body_is_canonical() -> None:
    step_a = {"containers": [{"exit_code": None, "lines": 1, "container": "c", "pod": "p"}], "chunks": 1,
              "omitted_lines": 0, "lines": 1, "truncated": False, "last_output": "x"}
    one = {"steps": {"running": step_a, "alpha": dict(step_a)}, "incomplete_streams": [{"container": "c", "pod": "p"}],
           "complete": False, "job_id": "j"}
    two = {"job_id": "j", "complete": False, "incomplete_streams": [{"pod": "p", "container": "c"}],
           "steps": {"alpha": dict(reversed(step_a.items())), "running": step_a}}
    body = summary_body(one)
    assert body == summary_body(two)
    assert body.startswith(b'{"job_id":"j","complete":false,"incomplete_streams":[{"pod":"p","container":"c"}],'
                           b'"steps":{"alpha":{"last_output":"x","truncated":false,"lines":1,"omitted_lines":0,'
                           b'"chunks":1,"containers":[{"pod":"p","container":"c","lines":1,"exit_code":null}]}')
    assert orjson.loads(body) == one


@st.composite
def job_batches(draw: st.DrawFn) -> list[StoredBatch]:
    """A few streams, each cut into batches several ways, with re-read copies and drop reports."""
    out: list[StoredBatch] = []
    containers = ["blast", "results-export", "helper", "vmtouch"]
    for s in range(draw(st.integers(1, 4))):
        pod, container = f"pod-{s % 2}", containers[s]
        n = draw(st.integers(0, 25))
        lines = [(7 * i, float(draw(st.integers(0, 3))), f"{container}-{i}") for i in range(n)]
        seq = 0
        for _ in range(draw(st.integers(1, 3))):
            cuts = sorted(draw(st.lists(st.integers(0, n), max_size=4)))
            for lo, hi in zip([0, *cuts], [*cuts, n], strict=True):
                part = [(o, ts + draw(st.sampled_from([0.0, 0.5])), t) for o, ts, t in lines[lo:hi]]
                drop = draw(st.sampled_from([None, Dropped(7 * lo - 3, 2, 11), Dropped(7 * lo - 3, 0, 0)]))
                out.append(
                    StoredBatch(JOB, pod, container, draw(st.sampled_from(["running", "unknown"])), seq,
                                draw(st.booleans()), draw(st.sampled_from([None, 0, 1])), drop, tuple(part))
                )
                seq += draw(st.integers(0, 1))
    return out


@settings(max_examples=100, deadline=None)
@given(bs=job_batches(), seed=st.integers(0, 2**32))
def test_same_batches_in_any_order_give_identical_artifacts(bs: list[StoredBatch], seed: int) -> None:
    shuffled = bs[:]
    random.Random(seed).shuffle(shuffled)
    kwargs: dict[str, Any] = {"head_lines": 4, "tail_lines": 6, "chunk_events": 5}
    a, b = build_artifacts(bs, **kwargs), build_artifacts(shuffled, **kwargs)
    assert a == b

    def dump(art: Artifacts) -> list[bytes]:
        out = [chunk_body(JOB, p, i, c) for p, cs in art.phases.items() for i, c in enumerate(cs)]
        summary = {"job_id": JOB, "complete": art.complete, "incomplete_streams": art.incomplete_streams,
                   "steps": art.steps}
        return [*out, summary_body(summary)]

    assert dump(a) == dump(b)
    for phase, chunks in a.phases.items():
        assert all(1 <= len(c) <= 5 for c in chunks)
        lines = sum(1 for c in chunks for e in c if not e["line"].startswith("[... "))
        assert lines == a.steps[phase]["lines"]
        # within a stream, kept lines keep their order and appear once
        for pod, ctr in {(e["pod"], e["container"]) for c in chunks for e in c}:
            own = [e["line"] for c in chunks for e in c if (e["pod"], e["container"]) == (pod, ctr)]
            nums = [int(t.rsplit("-", 1)[1]) for t in own if not t.startswith("[... ")]
            assert nums == sorted(set(nums))
