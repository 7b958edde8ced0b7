"""A tool that opens a nursery of its own (two lookups at once) raises what the nursery
raises: an exception group, never a bare exception. The executor turned a bare SystemExit,
or a bare Cancelled, into the tool's outcome, and let the grouped ones past: the call ended,
or a barge-in waited out the longest tool timeout in silence."""

from __future__ import annotations

import math
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio

from actors import tool_executor
from actors.messages import Outbound, ToolBatch, ToolCall, ToolOutcome
from tests.call_harness import open_test_call, plain_use_case
from tests.fakes import FakeLLM, MemoryStore, tool_use, words
from voiceagent.tools.base import ToolDefinition
from voiceagent.tools.registry import ToolRegistry

LOOKUP = [{"name": "lookUp", "description": "Look up two things at once."}]
TOOL_TIMEOUT_S = 30.0


async def _at_once(*lookups: Callable[[], Awaitable[object]]) -> dict[str, Any]:
    async with trio.open_nursery() as nursery:
        for lookup in lookups:
            nursery.start_soon(lookup)
    return {"found": True}


async def _slow() -> None:
    await trio.sleep(TOOL_TIMEOUT_S * 10)


async def _gives_up() -> None:
    await trio.sleep(0.5)
    sys.exit("the CRM client gave up")          # a library written for the command line


async def _close_fails() -> None:
    """A client whose close, run as it is cancelled, raises: the nursery then holds both
    the Cancelled and this error."""
    try:
        await _slow()
    except trio.Cancelled:
        raise ConnectionResetError("closing the client failed") from None


def _registry(*lookups: Callable[[], Awaitable[object]], side_effect: bool = False,
              started: trio.Event | None = None) -> ToolRegistry:
    async def look_up(ctx: Any, args: Any) -> dict[str, Any]:
        if started is not None:
            started.set()
        return await _at_once(*lookups)
    return ToolRegistry([ToolDefinition("lookUp", look_up, timeout_s=TOOL_TIMEOUT_S,
                                        side_effect=side_effect)])


async def test_sys_exit_inside_a_tools_nursery_fails_the_tool_not_the_call(
        autojump_clock: Any) -> None:
    llm = FakeLLM([tool_use("tu_1", "lookUp"), words("Sorry, that failed.")])
    async with open_test_call(llm, use_case=plain_use_case(tools=LOOKUP),
                              registry=_registry(_gives_up, _slow)) as call:
        call.say("what do you have?")
        with trio.fail_after(10):
            text, _ = await call.reply()
    assert text == "Sorry, that failed."
    (result,) = [b["toolResult"] for m in call.history for b in m["content"]
                 if "toolResult" in b]
    assert result["status"] == "error"
    assert result["content"] == [{"text": "failed: SystemExit: the CRM client gave up"}]


@pytest.mark.parametrize("lookups", [(_slow, _slow), (_close_fails, _slow)],
                         ids=["cancelled", "cancelled-beside-an-error"])
async def test_a_barge_in_during_a_tool_with_a_nursery_is_answered_at_once(
        autojump_clock: Any, lookups: tuple[Callable[[], Awaitable[object]], ...]) -> None:
    """The barge-in's Cancelled comes out of the tool's nursery grouped: the executor did not
    report the call cancelled, and the cut turn waited the tool's whole timeout for its
    outcome; with an error beside it (a client's close failing), the group ended the call."""
    started = trio.Event()
    llm = FakeLLM([tool_use("tu_1", "lookUp", before="Let me check."),
                   words("Yes, go ahead.")])
    async with open_test_call(llm, use_case=plain_use_case(tools=LOOKUP),
                              registry=_registry(*lookups, started=started)) as call:
        call.say("what do you have?")
        await started.wait()
        call.interrupt(heard="Let me check.")
        call.say("actually, one more question")
        with trio.fail_after(TOOL_TIMEOUT_S / 10):
            replies = [(await call.reply())[0] for _ in range(2)]
        assert replies == ["Let me check.", "Yes, go ahead."]
        assert not call.done.is_set()
    assert not any("toolUse" in b for m in call.history for b in m["content"])


async def test_a_side_effect_tool_timed_out_while_its_nursery_failed_says_it_may_have_run(
        autojump_clock: Any) -> None:
    """The timeout cancels the nursery and its client's close fails: that error was the
    model's whole answer, without 'it may still have taken effect', so it booked again."""
    outcome = await _one_outcome(_registry(_close_fails, _slow, side_effect=True))
    assert outcome.content == (
        f"timed out after {TOOL_TIMEOUT_S:g} s; tell the caller and offer another way. "
        "It may still have taken effect: check before repeating it.")


async def test_ctrl_c_inside_a_tools_nursery_still_stops_the_server(
        autojump_clock: Any) -> None:
    """SystemExit beside it is the tool's failure; KeyboardInterrupt is the operator's."""
    async def interrupted() -> None:
        try:
            await _slow()
        except trio.Cancelled:
            raise KeyboardInterrupt from None   # Ctrl-C, landing as the nursery unwinds

    with pytest.raises(BaseExceptionGroup) as raised:
        await _one_outcome(_registry(_gives_up, interrupted))
    assert raised.value.subgroup(KeyboardInterrupt) is not None


async def _one_outcome(registry: ToolRegistry) -> ToolOutcome:
    outbound, _ = trio.open_memory_channel[Outbound](math.inf)
    env = tool_executor.ToolEnv(call_sid="CA1", use_case=plain_use_case(tools=LOOKUP),
                                registry=registry, store=MemoryStore(), outbound=outbound)
    results_send, results = trio.open_memory_channel[ToolOutcome](1)
    with trio.fail_after(TOOL_TIMEOUT_S * 2):
        async with trio.open_nursery() as nursery:
            with tool_executor.ToolExecutor(nursery, env) as executor:
                executor.submit(ToolBatch((ToolCall("tu_1", "lookUp", {}),), results_send))
    return results.receive_nowait()
