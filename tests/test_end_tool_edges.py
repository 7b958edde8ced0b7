"""Review s14 (helper): a tool that sent ``end`` and then did not return a result (it raised,
or its limit expired). The call is over (Twilio got ``end``), yet the turn and the history
treat the tool as if it had not ended anything."""
from __future__ import annotations

from typing import Any

import trio
import trio.testing

from tests.breaking_socket import hours_on_a_socket_that_breaks
from tests.call_harness import open_test_call
from tests.end_tools import HANDOFF_END, HANDOFF_USE_CASE, hanging_handoff
from tests.fakes import FakeLLM, tool_use, words
from voiceagent.llm.converse import converse_problems
from voiceagent.tools.base import ToolDefinition
from voiceagent.tools.registry import ToolRegistry


def _failing_handoff(summaries: list[str]) -> ToolRegistry:
    async def handoff(ctx: Any, args: Any) -> dict[str, Any]:
        await ctx.send(HANDOFF_END)
        await trio.sleep(0.5)                   # the summary, written to a store ...
        summaries.append("failed")
        raise RuntimeError("summary store unavailable")   # ... that fails
    return ToolRegistry([ToolDefinition("handoff", handoff, timeout_s=10, ends_turn=True)])


async def test_a_tool_that_sent_end_and_then_failed_does_not_start_another_model_round(
        autojump_clock: Any) -> None:
    """The handoff's ``end`` is out (the transfer happens), then its summary write raised.
    The turn only stops after an ending tool whose *result* came back, so it asked the
    model again: a billed round whose words the writer drops after ``end``; the model,
    told the handoff failed, may call it again."""
    summaries: list[str] = []
    llm = FakeLLM([tool_use("tu_h", "handoff", before="Let me transfer you."),
                   words("Sorry, the transfer failed. Let me try again.")])
    async with open_test_call(llm, use_case=HANDOFF_USE_CASE,
                              registry=_failing_handoff(summaries)) as call:
        call.say("a person please")
        await call.until_end()
        await trio.sleep(3)
    assert summaries == ["failed"]
    assert len(llm.requests) == 1, "the model was asked again after the call had ended"
    assert converse_problems(call.report.history.for_request()) == []  # type: ignore[union-attr]


async def test_a_tool_that_sent_end_and_then_failed_stays_in_history_after_a_barge_in(
        autojump_clock: Any) -> None:
    """Same tool, and the caller cut into "Let me transfer you." after ``end`` went out. The
    tool ran on (shielded) but failed, so its outcome is an error, not ``ends_call``, not a
    side effect, not audio: ``tool_rounds.record_cut`` drops it, and the history says the
    agent never transferred, though it did (the case commit a2c9466 fixed for a tool that
    succeeds)."""
    summaries: list[str] = []
    llm = FakeLLM([tool_use("tu_h", "handoff", before="Let me transfer you.")])
    async with open_test_call(llm, use_case=HANDOFF_USE_CASE,
                              registry=_failing_handoff(summaries)) as call:
        call.say("a person please")
        await call.until_end()
        call.interrupt(heard="Let me transfer you.")
        await trio.sleep(3)
    assert summaries == ["failed"]
    uses = [b["toolUse"]["toolUseId"] for m in call.history for b in m["content"]
            if "toolUse" in b]
    assert uses == ["tu_h"], call.history
    assert converse_problems(call.report.history.for_request()) == []  # type: ignore[union-attr]


async def test_a_tool_that_sent_end_and_hangs_does_not_hold_teardown_to_its_timeout(
        autojump_clock: Any) -> None:
    """A handoff that sent ``end`` and then hangs (a summary written to a store that does
    not answer). Twilio closes the socket ~90 ms after ``end``; teardown is bounded
    (TEARDOWN_S, docs/architecture.md: "Teardown in bounded time"), side-effect tools
    aside. Since the tool's own scope is shielded once its ``end`` is taken, the call, its
    MAX_CALLS slot and its final store write wait the tool's whole limit (60 s here)."""
    llm = FakeLLM([tool_use("tu_h", "handoff", before="Let me transfer you.")])
    async with open_test_call(llm, use_case=HANDOFF_USE_CASE,
                              registry=hanging_handoff()) as call:
        call.say("a person please")
        await call.until_end()
        await trio.sleep(0.1)
        closed_at = trio.current_time()
        call.socket.hang_up()                   # Twilio closes after our `end`
        await call.done.wait()
        took = trio.current_time() - closed_at
    assert took <= 2.0 + 1.0, f"teardown took {took:.1f} s"
    assert converse_problems(call.report.history.for_request()) == []  # type: ignore[union-attr]


async def test_unsent_last_frame_stays_unsaid_when_a_prompt_follows_the_broken_socket(
        autojump_clock: Any) -> None:
    """As test_heard_records' test_a_last_frame_that_failed_after_the_turn_recorded_it_is_
    not_stored (the reply's last frame taken, the turn recorded it, then the send failed),
    but the caller's next prompt was already on its way and started another turn before
    the call noticed the socket was gone. ``turn_started`` moves the unsent words to
    ``_earlier``, and ``drop_unsent_at_end`` only takes the newest turn's: the store keeps
    "and close at ten" as said, and a reconnect resumes from words Twilio never got. (Twilio
    sent the prompt and closed; our send failed first, then the reader drained the prompt
    the socket had buffered before it saw the close.)"""
    llm = FakeLLM([words("We open at nine, and close at ten", gap_s=0.05), words("Okay.")])
    call, sent = await hours_on_a_socket_that_breaks(llm, then="mhm")
    assert sent == "We open at nine,"
    said = [b["text"] for m in call.history if m["role"] == "assistant"
            for b in m["content"] if "text" in b]
    assert "We open at nine," in said, said
    assert not any("close at ten" in t for t in said), said
    assert [entry["chat"] for entry in call.writer.stored()] == list(call.history)
