"""Review s14 (helper): a tool that sent ``end`` and then did not return a result (it raised,
or its limit expired). The call is over (Twilio got ``end``), yet the turn and the history
treat the tool as if it had not ended anything."""
from __future__ import annotations

from typing import Any

import trio
import trio.testing

from tests.call_harness import open_test_call, plain_use_case
from tests.fakes import FakeLLM, tool_use, words
from voiceagent.llm.converse import converse_problems
from voiceagent.relay.outbound import End
from voiceagent.tools.base import ToolDefinition
from voiceagent.tools.registry import ToolRegistry

USE_CASE = plain_use_case(tools=[{"name": "handoff", "description": "To a person"}])


def _failing_handoff(summaries: list[str]) -> ToolRegistry:
    async def handoff(ctx: Any, args: Any) -> dict[str, Any]:
        await ctx.send(End(handoff_data='{"reasonCode": "live-agent-handoff"}'))
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
    async with open_test_call(llm, use_case=USE_CASE,
                              registry=_failing_handoff(summaries)) as call:
        call.say("a person please")
        with trio.fail_after(5):
            while (await call.frame())["type"] != "end":
                pass
        await trio.sleep(3)
    assert summaries == ["failed"]
    assert len(llm.requests) == 1, "the model was asked again after the call had ended"
    assert converse_problems(call.report.history.for_request()) == []  # type: ignore[union-attr]


async def test_a_tool_that_sent_end_and_then_failed_stays_in_history_after_a_barge_in(
        autojump_clock: Any) -> None:
    """Same tool, and the caller cut into "Let me transfer you." after ``end`` went out. The
    tool ran on (shielded) but failed, so its outcome is an error, not ``ends_call``, not a
    side effect, not audio: ``_record_cut`` drops it, and the history says the agent never
    transferred, though it did (the case commit a2c9466 fixed for a tool that succeeds)."""
    summaries: list[str] = []
    llm = FakeLLM([tool_use("tu_h", "handoff", before="Let me transfer you.")])
    async with open_test_call(llm, use_case=USE_CASE,
                              registry=_failing_handoff(summaries)) as call:
        call.say("a person please")
        with trio.fail_after(5):
            while (await call.frame())["type"] != "end":
                pass
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
    async def handoff(ctx: Any, args: Any) -> dict[str, Any]:
        await ctx.send(End(handoff_data='{"reasonCode": "live-agent-handoff"}'))
        await trio.sleep_forever()              # the store never answers
        return {"status": "transferring"}

    registry = ToolRegistry([ToolDefinition("handoff", handoff, timeout_s=60, ends_turn=True)])
    llm = FakeLLM([tool_use("tu_h", "handoff", before="Let me transfer you.")])
    async with open_test_call(llm, use_case=USE_CASE, registry=registry) as call:
        call.say("a person please")
        with trio.fail_after(5):
            while (await call.frame())["type"] != "end":
                pass
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
    from tests.test_heard_records import _BreaksOnSend

    llm = FakeLLM([words("We open at nine, and close at ten", gap_s=0.05), words("Okay.")])
    socket = _BreaksOnSend("close")
    async with open_test_call(llm, socket=socket,
                              services_changes={"token_hold_s": 0.5}) as call:
        call.say("hours?")
        await trio.sleep(3)
        sent = "".join(f.get("token", "") for f in call.socket.pending())
        call.say("mhm")                         # read before the close reaches the reader
        await trio.sleep(3)
        call.socket.hang_up()
        with trio.fail_after(10):
            await call.done.wait()
    assert sent == "We open at nine,"
    said = [b["text"] for m in call.history if m["role"] == "assistant"
            for b in m["content"] if "text" in b]
    assert "We open at nine," in said, said
    assert not any("close at ten" in t for t in said), said
    assert [entry["chat"] for entry in call.writer.stored()] == list(call.history)
