"""``voiceagent serve`` and the open-file limit: raised when the system allows, a warning
with the fix when it does not, and what it buys: connections past the old soft limit."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from tests.serve_process import serve_process
from voiceagent.app.open_files import files_needed
from voiceagent.settings import Settings

# MAX_CALLS=1000 with the scripted model and SQLite: connections 1000 + 10 + 50 (sockets
# waiting) + 250 (webhooks: open_connections.py), then 0 + 8 + 128 (open_files.py)
NEEDED = 1446


def _proc_limits(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no 'Max open files' in /proc/PID/limits")


@pytest.mark.timeout(60)
async def test_a_low_soft_limit_is_raised_to_what_max_calls_needs(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with serve_process(tmp_path, open_files=(256, 4096), MAX_CALLS="1000") as server:
            entry = await server.wait_log("open-file limit")
            assert (entry["raised_from"], entry["soft"], entry["needed"]) == (256, NEEDED,
                                                                              NEEDED)
            assert _proc_limits(server.process.pid) == (NEEDED, 4096)


@pytest.mark.timeout(60)
async def test_a_hard_limit_too_low_is_a_warning_with_the_fix(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with serve_process(tmp_path, open_files=(256, 512), MAX_CALLS="1000") as server:
            entry = await server.wait_log("open-file limit too low for MAX_CALLS")
            assert entry["level"] == "warning"
            assert (entry["soft"], entry["hard"], entry["needed"]) == (512, 512, NEEDED)
            assert entry["max_connections"] == 512 - 8 - 128    # the rest of the limit
            assert "--ulimit nofile" in entry["fix"]
            assert "MAX_CALLS" in entry["fix"]
            assert _proc_limits(server.process.pid) == (512, 512)   # raised as far as allowed


@pytest.mark.timeout(60)
async def test_connections_past_the_old_soft_limit_are_answered(tmp_path: Path) -> None:
    """Started at a soft limit of 128, the server holds 200 connections at once and answers
    each. Without the raise, past ~115 connections trio's accept loop hits EMFILE every 0.1 s
    and the rest wait (until hypercorn's keep-alive timeout, 5 s, frees some) or get a 500."""
    held = 200
    answered = 0
    all_answered = trio.Event()

    async def hold_one(port: int) -> None:
        nonlocal answered
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            reply = b""
            while b"\r\n\r\n" not in reply:
                chunk = await stream.receive_some(4096)
                assert chunk, "the server closed the connection without an answer"
                reply += chunk
            assert reply.startswith(b"HTTP/1.1 200"), reply[:80]
            answered += 1
            if answered == held:
                all_answered.set()
            await all_answered.wait()            # every connection stays open until the last

    with trio.fail_after(30):
        async with serve_process(tmp_path, open_files=(128, 4096), MAX_CALLS="300") as server:
            port = int(server.url.rsplit(":", 1)[1])
            with trio.fail_after(4):             # under the 5 s an unraised limit would cost
                async with trio.open_nursery() as nursery:
                    for _ in range(held):
                        nursery.start_soon(hold_one, port)
    assert answered == held


def test_the_count_is_the_one_the_readme_gives() -> None:
    """README: about 1.25 x MAX_CALLS + MAX_SOCKETS_WAITING + MAX_CONCURRENT_TURNS
    + 2 x STORE_THREADS + 138 in production (Bedrock, DynamoDB); neither pool with the
    scripted model and SQLite."""
    production = Settings.model_construct(max_calls=2500, max_concurrent_turns=300,
                                          store_threads=16, llm="bedrock", store="dynamodb",
                                          max_sockets_waiting=50)
    assert files_needed(production) == 2500 * 1.25 + 50 + 300 + 2 * 16 + 138
    local = Settings.model_construct(max_calls=1000, max_concurrent_turns=300,
                                     store_threads=16, llm="scripted", store="sqlite",
                                     max_sockets_waiting=50)
    assert files_needed(local) == NEEDED
