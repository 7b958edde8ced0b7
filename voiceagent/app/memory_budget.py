"""How much memory the write-behind backlog may take before new calls are refused.

A store outage makes the backlog grow with every turn; counted in items alone, a use case with
large tool results (up to 32 KiB each) outgrew a small task long before the count said stop,
and the process was killed with every call and every queued write in it. So the backlog is
also counted in bytes, against a budget that follows the container's memory limit.
"""

from __future__ import annotations

from pathlib import Path

from voiceagent.settings import Settings

BUDGET_SHARE = 0.4          # of the container's memory: the calls themselves need the rest
NO_LIMIT_BUDGET_MB = 800    # no limit found (a developer's machine): as WRITE_BACKLOG_MAX did
_CGROUP_LIMITS = (Path("/sys/fs/cgroup/memory.max"),                    # cgroup v2
                  Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))  # cgroup v1
_UNLIMITED = 1 << 60        # v1 writes a huge number for "no limit"


def container_memory_limit(paths: tuple[Path, ...] = _CGROUP_LIMITS) -> int | None:
    """The memory limit the kernel enforces on this container in bytes, or None."""
    for path in paths:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < _UNLIMITED:
            return int(text)
        return None                 # "max": no limit
    return None


def backlog_budget_bytes(settings: Settings, limit: int | None = None) -> int:
    """``WRITE_BACKLOG_MAX_MB`` when set; else this process's part of a share of the
    container's limit: ``WORKERS`` processes share the container (docker/entrypoint.sh),
    and each took the whole share, 3 of them 120 % of it (helper-32)."""
    if settings.write_backlog_max_mb is not None:
        return settings.write_backlog_max_mb * 1024 * 1024
    if limit is None:
        limit = container_memory_limit()
    if limit is None:
        return NO_LIMIT_BUDGET_MB * 1024 * 1024 // settings.workers
    return int(limit * BUDGET_SHARE) // settings.workers
