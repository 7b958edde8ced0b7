"""The open-file limit a server needs for MAX_CALLS, raised at start-up when the system allows.

Every connection the server accepts holds a file (at most ``open_connections``' cap: the
calls' relay sockets, those waiting for setup, webhooks); each turn streaming from Bedrock
holds a connection (at most MAX_CONCURRENT_TURNS, kept alive between turns); DynamoDB has its
client's pool and the loop's. Past the soft limit ``accept`` fails with EMFILE: trio logs it
and tries again every 0.1 s, and new calls wait unanswered in the listen backlog while the
calls already up go on (measured: a soft limit of 120 under 150 calls, 49 such pauses). Many
systems start processes at a soft limit of 1024 with a far higher hard limit, which any
process may raise its own soft limit to, so the server does that; when the hard limit itself
is too low, it says so once at start-up, with what to change, instead of failing quietly
under load; the connections are then capped within it (``connection_limit``).
"""

from __future__ import annotations

import logging

from voiceagent.app.open_connections import connections_allowed
from voiceagent.settings import Settings

try:
    import resource
except ImportError:                   # Windows: no such limit to raise
    resource = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

OVERHEAD = 128          # the interpreter, logs, the listener, threads' wakeups, webhooks out
MIN_CONNECTIONS = 16    # a limit too low for anything else still lets /health and a call in


def files_reserved(settings: Settings) -> int:
    """Files that are not accepted connections: the model's and the store's pools, ours."""
    model = settings.max_concurrent_turns if settings.llm == "bedrock" else 0
    store = 2 * settings.store_threads if settings.store == "dynamodb" else 8
    return model + store + OVERHEAD


def files_needed(settings: Settings) -> int:
    return connections_allowed(settings) + files_reserved(settings)


def connection_limit(settings: Settings) -> int:
    """The cap on accepted connections: what the settings need, within what the current
    soft limit leaves after ``files_reserved`` (so a flood of connections cannot take the
    model's and the store's files)."""
    allowed = connections_allowed(settings)
    if resource is None:
        return allowed
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return allowed
    return max(MIN_CONNECTIONS, min(allowed, soft - files_reserved(settings)))


def ensure_open_files(settings: Settings) -> None:
    """Raise the soft limit to what the settings need (up to the hard limit) and log the
    outcome: info when enough, a warning naming the fix when not (-1 for unlimited)."""
    if resource is None:
        return
    needed = files_needed(settings)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    unlimited = resource.RLIM_INFINITY
    raised_from = None
    if soft != unlimited and soft < needed:
        target = needed if hard == unlimited else min(needed, hard)
        if target > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                raised_from, soft = soft, target
            except (ValueError, OSError) as err:      # e.g. macOS caps it below the hard limit
                log.warning("cannot raise the open-file limit",
                            extra={"soft": soft, "wanted": target, "error": str(err)})
    shown = {"soft": -1 if soft == unlimited else soft,
             "hard": -1 if hard == unlimited else hard, "needed": needed}
    if soft != unlimited and soft < needed:
        log.warning("open-file limit too low for MAX_CALLS", extra={
            **shown,
            "max_calls": settings.max_calls,
            "max_concurrent_turns": settings.max_concurrent_turns,
            "max_connections": connection_limit(settings),
            "effect": "open connections are capped at max_connections, below what "
                      "MAX_CALLS needs: past it new calls are refused",
            "fix": "raise the hard limit (docker run --ulimit nofile=65536, systemd "
                   "LimitNOFILE=65536; the SAM template sets 65536) or lower MAX_CALLS"})
    else:
        log.info("open-file limit", extra={**shown, "raised_from": raised_from,
                                           "max_connections": connection_limit(settings)})
