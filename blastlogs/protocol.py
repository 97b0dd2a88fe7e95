"""The wire protocol both programs speak (docs/protocol.md sections 4 to 6).

Pure values and functions only: no I/O, no storage dependency, so the shipper's image can carry it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

INGEST_PATH: Final = "/v1/ingest"
FINALIZE_PATH: Final = "/v1/jobs/{job_id}/finalize"

#: A line is at most this many characters (code points, without its newline), marker included.
MAX_LINE_CHARS: Final = 4000
#: A batch is at most this many events.
MAX_BATCH_EVENTS: Final = 1000
#: A batch is at most this many bytes of JSON after inflating.
MAX_BATCH_BYTES: Final = 1024 * 1024

JOB_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
#: ...and a job id must not end with this: it is a storage path segment, and Azure documents that a
#: segment should not end with a dot (it may trim it: `elb-1.` and `elb-1` would meet).
JOB_ID_BAD_END: Final = "."
#: The job id rule in words, for answers and docs.
JOB_ID_RULE: Final = f"job_id must match {JOB_ID_RE.pattern} and not end with '{JOB_ID_BAD_END}'"
K8S_NAME_RE: Final = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")
K8S_NAME_MAX: Final = 253
PHASE_RE: Final = re.compile(r"[a-z][a-z0-9_]{0,63}")

#: Containers docs/protocol.md section 5 names, the phases each feeds, and whether it is primary there.
DEFAULT_PHASE_TABLE: Final[dict[str, dict[str, tuple[str, ...]]]] = {
    "get-blastdb": {"feeds": ("staging_db",), "primary": ("staging_db",)},
    "import-query-batches": {"feeds": ("staging_db",), "primary": ("staging_db",)},
    "load-blastdb-into-ram": {"feeds": ("warming_up",), "primary": ("warming_up",)},
    "vmtouch": {"feeds": ("warming_up",), "primary": ("warming_up",)},
    "blast": {"feeds": ("running",), "primary": ("running",)},
    "results-export": {
        "feeds": ("running", "exporting_results"),
        "primary": ("running", "exporting_results"),
    },
}

#: The pod's default phase from its `app` label, for `inject`.
APP_LABEL_PHASES: Final = {"setup": "staging_db", "blast": "running"}
UNKNOWN_PHASE: Final = "unknown"


@dataclass(frozen=True, slots=True)
class Dropped:
    """A batch's `dropped` report: what the shipper deliberately left out just before the batch,
    `lines` lines of `bytes` stream bytes starting at stream offset `off`. Not `exact`: the shipper
    could not know what it lost (a file truncated or replaced unseen), and `lines` (at least 1) and
    `bytes` are lower bounds."""

    off: int
    lines: int
    bytes: int
    exact: bool = True

    def merge(self, later: Dropped) -> Dropped:
        """Two adjacent reports as one (`later` starts where this one ends)."""
        return Dropped(self.off, self.lines + later.lines, self.bytes + later.bytes, self.exact and later.exact)


def valid_job_id(value: object) -> bool:
    """`JOB_ID_RE`, and no id that storage could alias (`JOB_ID_BAD_END`)."""
    return (isinstance(value, str) and JOB_ID_RE.fullmatch(value) is not None
            and not value.endswith(JOB_ID_BAD_END))


def valid_k8s_name(value: object) -> bool:
    return (
        isinstance(value, str)
        and len(value) <= K8S_NAME_MAX
        and K8S_NAME_RE.fullmatch(value) is not None
    )


def valid_phase(value: object) -> bool:
    return isinstance(value, str) and PHASE_RE.fullmatch(value) is not None


def cut_marker(removed_chars: int) -> str:
    return f" [... {removed_chars} chars cut]"


def kept_chars(total_chars: int, limit: int = MAX_LINE_CHARS) -> int:
    """How many leading characters of a `total_chars` line survive the cap.

    The marker's own length depends on how many characters it reports, so take the largest
    prefix whose marker still fits in `limit`.
    """
    if total_chars <= limit:
        return total_chars
    keep = limit - len(cut_marker(total_chars))
    while keep + 1 + len(cut_marker(total_chars - keep - 1)) <= limit:
        keep += 1
    return max(keep, 0)


def cap_line(line: str, limit: int = MAX_LINE_CHARS, extra_chars: int = 0) -> str:
    """Cut `line` to `limit` characters, marker included.

    `extra_chars` counts characters that belonged to the line but were never held in memory
    (the shipper skips the middle of a huge line); they count as removed.
    """
    total = len(line) + extra_chars
    if total <= limit:
        return line
    # The held text may be shorter than the cap allows (the reader kept only a prefix).
    keep = min(kept_chars(total, limit), len(line))
    return line[:keep] + cut_marker(total - keep)


def omitted_marker(lines: int) -> str:
    return f"[... {lines} lines omitted ...]"


def dropped_marker(lines: int, nbytes: int, exact: bool = True) -> str:
    """The marker of a dropped report; an inexact one (`exact: false`) counts lower bounds."""
    return f"[... {'' if exact else 'at least '}{lines} lines ({nbytes} bytes) dropped by the shipper ...]"
