"""Install the packaged `logwrap` script into the shared volume (docs/protocol.md section 2).

The sidecar does this at start, before any wrapped container runs, so the application images
need nothing of ours but a POSIX `sh`.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Final

from blastlogs.atomic import write_atomic

#: Where the script lives inside the volume.
LOGWRAP_RELATIVE_PATH: Final = Path("bin") / "logwrap"
LOGWRAP_MODE: Final = 0o755


def logwrap_source() -> bytes:
    """The script's bytes as packaged with the shipper."""
    return resources.files("shipper").joinpath("logwrap.sh").read_bytes()


def install_logwrap(volume_dir: Path) -> Path:
    """Write `<volume_dir>/bin/logwrap` (mode 0755) and return its path.

    Atomic (`write_atomic`), so a container starting at the
    same moment sees either no script or the whole one; idempotent, so a restarted sidecar
    may run it again. Raises OSError when the volume cannot be written.
    """
    target = volume_dir / LOGWRAP_RELATIVE_PATH
    target.parent.mkdir(parents=True, exist_ok=True)
    data = logwrap_source()
    try:
        if target.read_bytes() == data and (target.stat().st_mode & 0o7777) == LOGWRAP_MODE:
            return target
    except OSError:
        pass
    write_atomic(target, data, mode=LOGWRAP_MODE, temp_prefix=".logwrap.")
    return target
