"""The machine a benchmark ran on, as the bench scripts record it in their JSON results."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any


def machine() -> dict[str, Any]:
    """CPU count and model, memory, Python, kernel and the load average at the time of the call."""
    cpu_model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
                break
    return {"nproc": os.cpu_count(), "cpu": cpu_model, "mem_gib": round(mem_kib / 1024 / 1024, 1),
            "python": platform.python_version(), "kernel": platform.release(),
            "load_avg": [round(x, 2) for x in os.getloadavg()]}


def write_results(results: Path, name: str, args: dict[str, Any], rows: list[Any], started: float) -> Path:
    """`rows` with their arguments and the machine as `results/{name}-{start}.json`; says where, and how long."""
    results.mkdir(exist_ok=True)
    out = results / f"{name}-{int(started)}.json"
    out.write_text(json.dumps({"args": args, "machine": machine(), "rows": rows}, indent=1))
    print(f"\n{time.time() - started:.0f} s in all; JSON: {out}")
    return out
