"""Trio's autojump for a test whose real parts work in worker threads (the server's SQLite,
boto3 against moto or the local Bedrock endpoint, the caller's webhooks): the virtual clock
jumps to the next deadline only once every task waits and no worker thread is running.

Plain autojump counts a task waiting on a thread as idle, so the clock runs on while the
thread works, as far as the next timeout, by however long the thread takes; on the real
clock a loaded machine makes the same work take seconds. With this, a thread's work takes
no time, and a test's ``fail_after`` catches a hang, not a slow machine. Only threads
started through ``trio.to_thread.run_sync`` (``voiceagent.threads.run_blocking`` included)
are seen. Opt-in, not every autojump test's clock: a blocking tool whose thread waits on the
loop (``trio.from_thread.run``) while virtual time must pass would hang here for ever
(test_tool_audio_as_its_tool_ends does exactly that, by design)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import trio
import trio.testing


def jump_when_settled(clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on until the test ends (``monkeypatch`` undoes it)."""
    run_sync = trio.to_thread.run_sync
    running = 0

    async def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal running
        running += 1
        clock.autojump_threshold = math.inf
        try:
            return await run_sync(*args, **kwargs)
        finally:
            running -= 1
            if not running:
                clock.autojump_threshold = 0

    monkeypatch.setattr(trio.to_thread, "run_sync", counted)
    clock.autojump_threshold = 0
