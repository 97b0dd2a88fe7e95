"""How much of the shared volume the logs hold, and a loud warning before the kubelet evicts the pod.

Reclaim (`shipper.reclaim`) gives back what was delivered, so the logs hold about what is not yet
delivered; with the aggregator down, a shipper that cannot ship, or a writer faster than the
shipper, that grows until the `emptyDir`'s `sizeLimit`, and then the pod is evicted (or, on a
volume that is a filesystem of that size, logwrap's writes fail). The sidecar cannot see the
`sizeLimit`: `--volume-limit-bytes` (which inject sets from it) tells it. Every `CHECK_EVERY`
seconds the allocated bytes of `logs/*.log` are summed (`lstat`: holes do not count, links are
not followed) into `blast_logs_shipper_log_disk_bytes{container}`; past `RISK_SHARE` of the
limit, `/healthz` says `degraded` with how full it is, and the log says so once each time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Final

from shipper.metrics import ShipperMetrics

log = logging.getLogger("shipper.diskuse")

#: seconds between looks
CHECK_EVERY: Final = 2.0
#: the share of the volume's limit the logs may hold before the shipper says the pod is at risk
RISK_SHARE: Final = 0.8
LOG_SUFFIX: Final = ".log"


def log_disk_bytes(logs_dir: Path) -> dict[str, int]:
    """Allocated bytes of each regular `*.log` file, by container (blocking: run in a thread)."""
    out: dict[str, int] = {}
    try:
        entries = list(os.scandir(logs_dir))
    except OSError:
        return out
    for entry in entries:
        if not entry.name.endswith(LOG_SUFFIX):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            out[entry.name[: -len(LOG_SUFFIX)]] = st.st_blocks * 512
    return out


def risk_text(used: int, limit: int) -> str | None:
    """What `/healthz` says when the logs hold too much of the volume, else None (pure)."""
    if limit <= 0 or used <= RISK_SHARE * limit:
        return None
    return (f"the logs hold {used / limit:.0%} of the volume's {limit / (1 << 20):.0f} MiB limit "
            f"({used / (1 << 20):.0f} MiB not yet delivered): the pod risks eviction")


async def watch(logs_dir: Path, limit: int, metrics: ShipperMetrics,
                risk: Callable[[str, str | None], None], every: float = CHECK_EVERY) -> None:
    """Keep the gauges current and the risk said, until cancelled."""
    metrics.volume_limit.set(limit)
    seen: set[str] = set()
    at_risk = False
    while True:
        sizes = await asyncio.to_thread(log_disk_bytes, logs_dir)
        for container, nbytes in sizes.items():
            metrics.log_disk_bytes.labels(container=container).set(nbytes)
        for gone in seen - sizes.keys():
            metrics.log_disk_bytes.remove(gone)
        seen = set(sizes)
        text = risk_text(sum(sizes.values()), limit)
        if text is not None and not at_risk:
            log.error("logs at risk: the volume is filling", extra={"detail": text})
        at_risk = text is not None
        risk("volume", text)
        await asyncio.sleep(every)
