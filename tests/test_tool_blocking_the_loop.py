"""An async tool doing blocking work (time.sleep, requests, sync boto3) froze every call of
the process, and only the event loop's lag said so, never which tool: the executor now times
each step of an async tool's coroutine and names one that held the loop. Timing must change
nothing else: a barge-in, an error or a foreign await reach the tool as they did.

The blocking here is real (``time.sleep``): wall time is the point, so it is kept short.
"""

from __future__ import annotations

import asyncio
import logging
import time
import types
from collections.abc import Generator
from pathlib import Path
from typing import Any, cast

import pytest
import trio
import trio.lowlevel

from actors.call import CallReport
from actors.tool_steps import BLOCKING_STEP_S, TimedSteps
from tests.call_harness import open_test_call, plain_use_case
from tests.fakes import FakeLLM, tool_use, words
from tests.server_harness import make_settings
from voiceagent.app.metrics import Metrics
from voiceagent.llm.base import StreamEnd, ToolUseRequest
from voiceagent.tools.base import ToolDefinition
from voiceagent.tools.registry import ToolRegistry, default_registry

TOOLS = [{"name": "stall", "description": "Blocks."}, {"name": "wait", "description": "Awaits."}]
BLOCK_S = BLOCKING_STEP_S * 1.5
WARNING = ("tool held the event loop, stalling every call; make the tool a plain def with "
           "blocking=True (it runs in the tools' own threads), or use an async client")


def _sync_client() -> None:
    """What requests or sync boto3 does to the loop when an async tool calls it."""
    time.sleep(BLOCK_S)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == WARNING]


def _results(history: tuple[dict[str, Any], ...]) -> list[dict[str, Any]]:
    return [b["toolResult"] for m in history for b in m["content"] if "toolResult" in b]


async def test_a_tool_that_blocks_is_named_once_per_call_and_one_that_awaits_is_not(
        autojump_clock: Any, caplog: pytest.LogCaptureFixture) -> None:
    async def stall(ctx: Any, args: Any) -> dict[str, Any]:
        await trio.lowlevel.checkpoint()
        _sync_client()                          # the developer's mistake: sync I/O on trio
        return {"done": True}

    async def wait(ctx: Any, args: Any) -> dict[str, Any]:
        for _ in range(3):
            await trio.sleep(1)                 # long, but the loop serves others meanwhile
        return {"done": True}

    caplog.set_level(logging.WARNING, logger="actors.tool_steps")
    both = [0.1, ToolUseRequest("tu_1", "stall", {}), ToolUseRequest("tu_2", "wait", {}),
            StreamEnd("tool_use")]
    llm = FakeLLM([both, words("Done."), tool_use("tu_3", "stall"), words("Done again.")])
    registry = ToolRegistry([ToolDefinition("stall", stall), ToolDefinition("wait", wait)])
    async with open_test_call(llm, use_case=plain_use_case(tools=TOOLS),
                              registry=registry) as call:
        for prompt in ("book it", "and again"):
            call.say(prompt)
            with trio.fail_after(30):
                await call.reply()
    assert [r["status"] for r in _results(call.history)] == ["success"] * 3
    (record,) = _warnings(caplog)                       # the second run: counted, not logged
    assert getattr(record, "tool", None) == "stall"
    assert getattr(record, "longest_step_ms", 0) >= round(BLOCK_S * 1000)
    assert record.levelno == logging.WARNING
    assert call.report.tool_blocking.runs == {"stall": 2}


async def test_a_barge_in_cuts_a_tool_that_blocked_as_it_did(
        autojump_clock: Any, caplog: pytest.LogCaptureFixture) -> None:
    started = trio.Event()

    async def stall(ctx: Any, args: Any) -> dict[str, Any]:
        _sync_client()
        started.set()
        await trio.sleep(300)                   # cut here by the barge-in
        return {"done": True}

    caplog.set_level(logging.WARNING, logger="actors.tool_steps")
    llm = FakeLLM([tool_use("tu_1", "stall", before="Let me check."), words("Yes.")])
    async with open_test_call(llm, use_case=plain_use_case(tools=TOOLS),
                              registry=ToolRegistry([ToolDefinition("stall", stall)])) as call:
        call.say("book it")
        await started.wait()
        call.interrupt(heard="Let me check.")
        call.say("actually, one more question")
        with trio.fail_after(30):
            replies = [(await call.reply())[0] for _ in range(2)]
        assert replies == ["Let me check.", "Yes."]
        assert not call.done.is_set()
    assert not any("toolUse" in b for m in call.history for b in m["content"])
    assert call.report.turns.barge_ins == 1
    (record,) = _warnings(caplog)
    assert getattr(record, "tool", None) == "stall"


def _bad_lookup(args: Any) -> int:
    return int(args["party_size"])


async def test_a_tool_that_blocked_then_raised_fails_as_it_did(
        autojump_clock: Any, caplog: pytest.LogCaptureFixture) -> None:
    async def stall(ctx: Any, args: Any) -> dict[str, Any]:
        _sync_client()
        return {"party": _bad_lookup(args)}

    caplog.set_level(logging.WARNING)
    llm = FakeLLM([tool_use("tu_1", "stall"), words("Sorry.")])
    async with open_test_call(llm, use_case=plain_use_case(tools=TOOLS),
                              registry=ToolRegistry([ToolDefinition("stall", stall)])) as call:
        call.say("book it")
        with trio.fail_after(30):
            assert (await call.reply())[0] == "Sorry."
    (result,) = _results(call.history)
    assert result["content"] == [{"text": "failed: KeyError: 'party_size'"}]
    (failed,) = [r for r in caplog.records if r.getMessage() == "tool failed"]
    line = _bad_lookup.__code__.co_firstlineno + 1
    assert getattr(failed, "at", None) == f"{__file__}:{line} in _bad_lookup"
    assert [getattr(r, "tool", None) for r in _warnings(caplog)] == ["stall"]


async def test_a_foreign_await_is_thrown_into_the_tool_as_it_was(
        autojump_clock: Any, caplog: pytest.LogCaptureFixture) -> None:
    """trio throws its TypeError into the coroutine that yielded asyncio's message: the
    tool's failure log places it there, not in the timing wrapper."""
    async def wait(ctx: Any, args: Any) -> dict[str, Any]:
        await asyncio.sleep(0)                  # an asyncio client, on trio
        return {"done": True}

    caplog.set_level(logging.WARNING, logger="actors.tool_executor")
    llm = FakeLLM([tool_use("tu_1", "wait"), words("Sorry.")])
    async with open_test_call(llm, use_case=plain_use_case(tools=TOOLS),
                              registry=ToolRegistry([ToolDefinition("wait", wait)])) as call:
        call.say("book it")
        with trio.fail_after(30):
            assert (await call.reply())[0] == "Sorry."
    (result,) = _results(call.history)
    assert result["content"][0]["text"].startswith(
        "failed: TypeError: trio.run received unrecognized yield message None.")
    (failed,) = [r for r in caplog.records if r.getMessage() == "tool failed"]
    assert str(getattr(failed, "at", "")).endswith(" in __sleep0"), failed.__dict__


def test_timed_steps_pass_what_is_sent_thrown_and_closed_through() -> None:
    seen: list[object] = []

    @types.coroutine
    def point() -> Generator[str, Any, Any]:
        return (yield "step")

    async def inner() -> None:
        try:
            seen.append(await point())
            try:
                await point()
            except ValueError as err:
                seen.append(err.args)
            await point()
        finally:
            seen.append("closed")

    steps = cast(Generator[Any, Any, None], TimedSteps(inner()).__await__())
    assert steps.send(None) == "step"
    assert steps.send("sent") == "step"
    assert steps.throw(ValueError("thrown")) == "step"
    steps.close()
    assert seen == ["sent", ("thrown",), "closed"]


def test_runs_that_held_the_loop_are_counted_by_tool() -> None:
    from types import SimpleNamespace

    registry = default_registry()
    name = registry.names()[0]
    metrics = Metrics(cast(Any, SimpleNamespace(settings=make_settings(Path("/nonexistent")),
                                                registry=registry)))
    report = CallReport()
    report.tool_blocking.runs.update({name: 2, "notRegistered": 1})
    metrics.on_call_finished(report)
    (family,) = metrics.tool_stalls.collect()
    assert {(s.name, s.labels["tool"], s.value) for s in family.samples
            if s.name.endswith("_total")} == {
        ("voiceagent_tool_loop_stalls_total", name, 2.0),
        ("voiceagent_tool_loop_stalls_total", "unknown", 1.0)}
