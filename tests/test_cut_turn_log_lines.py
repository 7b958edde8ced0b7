"""A turn cut short, read from its log lines as an operator filtering on the CallSid (and
the turn) reads them.

A caller who hangs up while a tool runs: "turn done" listed the tools of finished rounds
only, and a cut tool logs nothing of its own, so the turn said ``stop_reason: tool_use,
cut_by: hangup, tools: []`` and no line named the tool. And "turn cancelled" carried turn
0, the streamer's, not the turn it cut."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.server_harness import AUTH_TOKEN, make_settings, running_server
from voiceagent.app.caller import open_call
from voiceagent.tools import ToolDefinition
from voiceagent.tools.registry import ToolRegistry

pytestmark = pytest.mark.timeout(60)


async def test_a_tool_cut_by_a_hang_up_is_named_in_its_turn_line(
        tmp_path: Path, records: list[logging.LogRecord]) -> None:
    started, never = trio.Event(), trio.Event()

    async def pickup_time(ctx: Any, args: Any) -> dict[str, Any]:
        started.set()
        await never.wait()                  # the kitchen's system does not answer
        return {"minutes": 15}

    registry = ToolRegistry([ToolDefinition("CheckRestaurantPickUpTime", pickup_time,
                                            timeout_s=30.0)])
    with trio.fail_after(30):
        async with running_server(make_settings(tmp_path), registry=registry) as server:
            async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                await call.say("when can I pick up my order?")     # the use case's tool rule
                await started.wait()
                await call.hang_up()
            await server.runtime.calls.wait_idle()
    sid = call.identity.call_sid
    (done,) = [r for r in records
               if r.getMessage() == "turn done" and vars(r)["call_sid"] == sid]
    assert vars(done)["cut_by"] == "hangup"
    assert vars(done)["tools"] == []                    # finished rounds only: metrics
    assert vars(done)["tools_cut"] == [{"tool": "CheckRestaurantPickUpTime", "state": "cut"}]


async def test_a_side_effect_tool_running_on_past_the_hang_up_is_named_running(
        tmp_path: Path, records: list[logging.LogRecord]) -> None:
    """A side-effect tool is shielded and not waited for: "turn done" says it runs on,
    and its own "tool done" follows, under the same CallSid."""
    started, answer = trio.Event(), trio.Event()

    async def pickup_time(ctx: Any, args: Any) -> dict[str, Any]:
        started.set()
        await answer.wait()
        return {"minutes": 15}

    class AnswerAfterTheTurnLine(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage() == "turn done":
                answer.set()                # the kitchen answers once the turn was logged

    registry = ToolRegistry([ToolDefinition("CheckRestaurantPickUpTime", pickup_time,
                                            timeout_s=30.0, side_effect=True)])
    watcher = AnswerAfterTheTurnLine()
    logging.getLogger("actors.turn").addHandler(watcher)
    try:
        with trio.fail_after(30):
            async with running_server(make_settings(tmp_path), registry=registry) as server:
                async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                    await call.say("when can I pick up my order?")
                    await started.wait()
                    await call.hang_up()
                await server.runtime.calls.wait_idle()
    finally:
        logging.getLogger("actors.turn").removeHandler(watcher)
    mine = [r for r in records if vars(r)["call_sid"] == call.identity.call_sid]
    events = [r.getMessage() for r in mine]
    (done,) = [r for r in mine if r.getMessage() == "turn done"]
    assert vars(done)["tools_cut"] == [{"tool": "CheckRestaurantPickUpTime",
                                        "state": "running"}]
    assert events.index("turn done") < events.index("tool done")


async def test_the_turn_cancelled_line_names_the_turn_it_cut(
        tmp_path: Path, records: list[logging.LogRecord]) -> None:
    """It carried turn 0 (the streamer's task), so filtering on CallSid and turn found the
    barge-in's "turn done" but not the line saying the turn was cut."""
    with trio.fail_after(30):
        async with running_server(make_settings(tmp_path)) as server:
            async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                await call.say("what are your hours?")
                await call.read_reply()
                await call.say("tell me a story")              # turn 2, long
                first = await call.receive()
                assert first is not None
                assert first["type"] == "text"
                await call.interrupt()
                await call.hang_up()
            await server.runtime.calls.wait_idle()
    (cancelled,) = [r for r in records if r.getMessage() == "turn cancelled"]
    assert vars(cancelled)["reason"] == "barge-in"
    assert vars(cancelled)["turn"] == 2
    cut = [vars(r)["turn"] for r in records
           if r.getMessage() == "turn done" and vars(r)["cut_by"] == "barge-in"]
    assert cut == [2]

