"""``benchmarks/minimal_server.py``, the floor issue 20 measures the framework against, as a real
process: if the baseline were wrong (replies not streamed, history lost, an interrupt that
leaves the model streaming), the comparison would flatter or shame the framework for nothing.

The local Bedrock endpoint runs in this test's event loop (``tests.fake_bedrock``), so every
request body it receives, and when the server closed each connection, can be checked; the
server is its own process with dummy credentials, driven as Twilio would through
``voiceagent.app.caller.open_call`` (signed, so the signature headers it ignores are there).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.fake_bedrock import (
    FakeBedrock,
    fake_bedrock_env,
    message_end,
    message_start,
    running_fake_bedrock,
    stream_reply,
    text_events,
    text_reply,
)
from voiceagent.app.caller import RelayCall, Reply, open_call

ROOT = Path(__file__).resolve().parent.parent
SERVER = ROOT / "benchmarks" / "minimal_server.py"
START_S = 20.0          # imports and boto3's endpoint resolution, on a busy machine
STEP_S = 3.0            # any one exchange
STOP_S = 5.0

pytestmark = pytest.mark.timeout(60)


def _env(fake: FakeBedrock, tmp_path: Path) -> dict[str, str]:
    """Dummy credentials and no AWS files: nothing may reach AWS. Nothing else of the
    developer's environment either (a proxy, MODEL_IDENTIFIER, MAX_CONCURRENT_TURNS)."""
    return {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path),
            "PYTHONPATH": str(ROOT), **fake_bedrock_env(fake, tmp_path)}


@asynccontextmanager
async def minimal_server(fake: FakeBedrock, tmp_path: Path
                         ) -> AsyncIterator[tuple[trio.Process, str]]:
    """The server process and its base URL, from the line it prints once listening; killed
    on exit if it is still there."""
    with (tmp_path / "server.stderr").open("wb") as stderr:
        process = await trio.lowlevel.open_process(
            [sys.executable, str(SERVER), "--port", "0", "--use-case", "testUseCase"],
            env=_env(fake, tmp_path), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=stderr)
        try:
            assert process.stdout is not None
            line = b""
            with trio.fail_after(START_S):
                while not line.endswith(b"\n"):
                    chunk = await process.stdout.receive_some(4096)
                    assert chunk, f"the server exited: {_tail(tmp_path)}"
                    line += chunk
            assert line.startswith(b"listening on http://127.0.0.1:"), line
            yield process, line.split()[-1].decode()
        finally:
            with trio.CancelScope(shield=True):
                if process.returncode is None:
                    process.kill()
                with trio.move_on_after(STOP_S):
                    await process.wait()


def _tail(tmp_path: Path) -> str:
    return (tmp_path / "server.stderr").read_text(errors="replace")[-2000:]


async def _reply(call: RelayCall) -> Reply:
    with trio.fail_after(STEP_S):
        return await call.read_reply()


async def _frame(call: RelayCall) -> dict[str, Any]:
    with trio.fail_after(STEP_S):
        frame = await call.receive()
    assert frame is not None, "the server closed the socket"
    return frame


def _user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": [{"text": text}]}


def _assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": [{"text": text}]}


async def test_minimal_server_streams_keeps_history_and_stops_on_interrupt(
        tmp_path: Path) -> None:
    async with running_fake_bedrock() as fake, minimal_server(fake, tmp_path) as (process, url):
        # call 1: two turns, the second sent with the first one's history
        fake.push(text_reply(["Hello", " there", "."]),
                  text_reply([" Sure", ",", " we", " are", " open", ". "]))
        # open_call bounds its own steps (HTTP_TIMEOUT_S); a fail_after around it could
        # not be used: its nursery outlives the scope. The test's timeout bounds the rest.
        async with open_call(url, auth_token="ignored") as call:
            await call.say("hi")
            reply = await _reply(call)
            assert reply.closed
            assert reply.tokens == ["Hello", " there", "."]
            assert [f["last"] for f in reply.frames] == [False] * 3 + [True]
            assert reply.frames[-1] == {"type": "text", "token": "", "last": True}
            await call.say("are you open")
            assert (await _reply(call)).text == " Sure, we are open. "
            first, second = fake.requests[:2]
            assert first.body["messages"] == [_user("hi")]
            assert second.body["messages"] == [_user("hi"), _assistant("Hello there."),
                                               _user("are you open")]
            assert first.call_sid == second.call_sid == call.identity.call_sid
            assert second.body["requestMetadata"]["useCase"] == "testUseCase"
            assert first.outcome == second.outcome == "complete"

            # call 2 (while call 1 stays open): an interrupt mid-reply closes the upstream
            # at once, the cut reply gets its closer and nothing more, and the history keeps
            # what was heard; then a keypad press is a turn of its own
            # w1 is due a minute after w0: closed within STEP_S, the upstream was closed by
            # the interrupt, not by the reply running out
            slow = [f" w{n}" for n in range(20)]
            fake.push(stream_reply(message_start(),
                                   text_events(slow, gap_s=60.0, first_delay_s=0.0),
                                   message_end()),
                      text_reply(["Pressed", " one."]))
            async with open_call(url) as other:
                await other.say("tell me a story")
                assert await _frame(other) == {"type": "text", "token": " w0", "last": False}
                interrupted = fake.requests[2]
                assert await other.interrupt() == " w0"
                with trio.fail_after(STEP_S):
                    await interrupted.connection.closed.wait()
                    await interrupted.done.wait()
                assert interrupted.outcome == "client_closed"
                assert interrupted.frames_sent == 2          # messageStart and w0, no w1
                assert await _frame(other) == {"type": "text", "token": "", "last": True}
                await other.dtmf("1")
                keyed = await _reply(other)             # w1 would show up here
                assert keyed.closed
                assert keyed.tokens == ["Pressed", " one."]
                assert fake.requests[3].body["messages"] == [
                    _user("tell me a story"), _assistant("w0"),
                    _user("(The caller pressed 1 on the keypad.)")]
                assert fake.requests[3].call_sid == other.identity.call_sid

                # SIGTERM with both calls connected: the process goes at once, cleanly
                process.terminate()
                with trio.fail_after(STOP_S):
                    await process.wait()
                assert process.returncode == 0, _tail(tmp_path)
                for gone in (other, call):          # closed by the server's exit
                    with trio.fail_after(STEP_S):
                        assert await gone.receive() is None
        assert fake.violations == []
        assert len(fake.requests) == 4
