"""CPU time and memory of local processes from ``/proc``: what the load generator reports
for the server it loads (summed over its workers), without a dependency for two files."""

from __future__ import annotations

import os
from pathlib import Path


def _clock_ticks() -> int:
    return os.sysconf("SC_CLK_TCK")


def read_processes(pids: tuple[int, ...]) -> dict[str, float] | None:
    """CPU seconds and RSS (KiB) summed over local processes (a server with several workers),
    or None if any is unreadable."""
    total = {"cpu_s": 0.0, "rss_kb": 0.0}
    for pid in pids:
        one = read_process(pid)
        if one is None:
            return None
        total["cpu_s"] += one["cpu_s"]
        total["rss_kb"] += one["rss_kb"]
    return total if pids else None


def read_process(pid: int) -> dict[str, float] | None:
    """CPU seconds (user+system) and RSS (KiB) of a local process, or None if unreadable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    cpu_s = (int(fields[11]) + int(fields[12])) / _clock_ticks()
    rss_kb = next((float(line.split()[1]) for line in status.splitlines()
                   if line.startswith("VmRSS:")), 0.0)
    return {"cpu_s": cpu_s, "rss_kb": rss_kb}
