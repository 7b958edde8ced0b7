"""TOKEN_HOLD_MS: a reply's first clause streams token by token, later tokens go together at a
clause end or when the hold expires (or, from a stream that can hand over what has arrived,
once per window); held text that was never sent is never spoken nor recorded.

Virtual clock throughout, so each frame's send time is asserted exactly.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from actors.context import CallContext
from actors.history import History
from actors.messages import Timed
from actors.turn import APOLOGY_CUT, TurnPlan
from actors.turn import run as run_turn
from tests import call_harness
from tests.call_harness import open_test_call, plain_use_case
from tests.fake_bedrock import running_fake_bedrock, text_reply
from tests.fakes import FakeLLM, tool_use, words
from tests.server_harness import AUTH_TOKEN, make_settings, running_server
from voiceagent.app.caller import open_call
from voiceagent.errors import ModelStreamFailed
from voiceagent.llm.base import HeldReads, LLMRequest, StreamEnd, TextDelta
from voiceagent.llm.scripted import ScriptedLLM
from voiceagent.settings import Settings
from voiceagent.tools.base import ToolDefinition
from voiceagent.tools.registry import ToolRegistry
from voiceagent.usecases import ScriptedConfig

HOLD = {"token_hold_s": 0.1}


async def timed_reply(call: call_harness.TestCall) -> list[tuple[float, str, bool]]:
    """(virtual time, token, last) for each text frame up to the one closing the cycle."""
    frames = []
    while True:
        frame = await call.frame()
        assert frame["type"] == "text"
        frames.append((round(trio.current_time(), 6), frame["token"], frame["last"]))
        if frame["last"]:
            return frames


async def test_first_clause_streams_then_chunks_at_clause_ends_and_hold_expiry(
        autojump_clock: Any) -> None:
    llm = FakeLLM([words("We open at nine, and close at ten tonight.", gap_s=0.03,
                         first_s=0.2)])
    async with open_test_call(llm, services_changes=HOLD) as call:
        call.say("when are you open?")
        frames = await timed_reply(call)
    assert frames == [
        (0.2, "We", False),                        # the first clause: the latency the
        (0.23, " open", False),                    # caller notices, whatever the TTS
        (0.26, " at", False),                      # needs before it speaks
        (0.29, " nine,", False),
        (0.42, " and close at ten", False),        # " and" came at 0.32: held 0.1 s
        (0.44, " tonight.", False),                # a clause end goes at once
        (0.44, "", True),
    ]
    assert call.history[-1]["content"] == [{"text": "We open at nine, and close at ten tonight."}]
    assert call.report.writer.tokens == 6


async def test_the_final_chunk_carries_last_true(autojump_clock: Any) -> None:
    llm = FakeLLM([words("Sure, a large one", gap_s=0.03, first_s=0.2)])
    async with open_test_call(llm, services_changes=HOLD) as call:
        call.say("a pizza please")
        assert await timed_reply(call) == [(0.2, "Sure,", False), (0.29, " a large one", True)]
    assert call.history[-1]["content"] == [{"text": "Sure, a large one"}]


async def test_a_long_first_clause_is_held_after_its_first_characters(
        autojump_clock: Any) -> None:
    text = "We open every single day of the week from eleven in the morning until late"
    llm = FakeLLM([words(text, gap_s=0.03, first_s=0.2)])
    async with open_test_call(llm, services_changes=HOLD) as call:
        call.say("hours?")
        frames = await timed_reply(call)
    streamed = [token for _, token, _ in frames[:-1]]
    assert all(" " not in token.strip() for token in streamed)      # one word per frame
    assert len("".join(streamed)) >= 60 > len("".join(streamed[:-1]))
    assert frames[-1][1:] == (" until late", True)                  # held, then sent last
    assert "".join(token for _, token, _ in frames) == text


async def test_a_slow_model_waits_no_longer_than_the_hold(autojump_clock: Any) -> None:
    llm = FakeLLM([words("Sure, we open at nine", gap_s=0.5, first_s=0.2)])
    async with open_test_call(llm, services_changes=HOLD) as call:
        call.say("hours?")
        frames = await timed_reply(call)
    assert frames == [(0.2, "Sure,", False), (0.8, " we", False), (1.3, " open", False),
                      (1.8, " at", False), (2.2, " nine", True)]


async def test_barge_in_drops_held_tokens_they_are_never_sent_nor_recorded(
        autojump_clock: Any) -> None:
    llm = FakeLLM([words("Sure, we open at nine and close at ten tonight.", gap_s=0.03,
                         first_s=0.2)])
    async with open_test_call(llm, services_changes=HOLD) as call:
        call.say("when are you open?")
        assert (await call.frame())["token"] == "Sure,"
        await trio.sleep_until(0.3)                # " we open at" is held, not sent
        call.interrupt(heard=None)
        await trio.testing.wait_all_tasks_blocked()
        assert call.socket.pending() == [{"type": "text", "token": "", "last": True}]
        assert llm.open_streams == 0
        await trio.sleep(5)
        assert call.socket.pending() == []
    assert call.history[-1]["content"] == [{"text": "Sure,"}]   # what was sent, not held
    assert call.report.writer.tokens == 1


async def test_held_text_is_spoken_before_a_tool_runs(autojump_clock: Any) -> None:
    started_at: list[float] = []
    registry = ToolRegistry()

    async def lookup(ctx: Any, args: Any) -> dict[str, Any]:
        started_at.append(trio.current_time())
        await trio.sleep(2)
        return {"minutes": 20}

    registry.register(ToolDefinition("pickupTime", lookup, timeout_s=10))
    before = words("Sure, let me look that up for you", gap_s=0.03)[:-1]
    llm = FakeLLM([[*before, *tool_use("tu_1", "pickupTime")[1:]],
                   words("About twenty minutes.", gap_s=0.03)])
    use_case = plain_use_case(tools=[{"name": "pickupTime", "description": "Minutes"}])
    async with open_test_call(llm, use_case=use_case, registry=registry,
                              services_changes=HOLD) as call:
        call.say("when is it ready?")
        frames = await timed_reply(call)
    assert frames[:3] == [(0.2, "Sure,", False), (0.33, " let me look that", False),
                          (0.41, " up for you", False)]   # flushed as the tool starts
    assert "".join(token for _, token, _ in frames) == (
        "Sure, let me look that up for you About twenty minutes.")
    tool_at = round(started_at[0], 6)
    assert "".join(token for at, token, _ in frames if at <= tool_at) == (
        "Sure, let me look that up for you")
    after = round(tool_at + 2.2, 6)                 # the next round's first clause streams
    assert frames[-4:] == [(after, " About", False), (round(after + 0.03, 6), " twenty", False),
                           (round(after + 0.06, 6), " minutes.", False),
                           (round(after + 0.06, 6), "", True)]


async def test_a_model_failure_sends_what_was_held_then_the_apology(
        autojump_clock: Any) -> None:
    llm = FakeLLM([[0.1, TextDelta("Sure,"), 0.03, TextDelta(" we"), 0.03, TextDelta(" open"),
                    ModelStreamFailed("modelStreamErrorException", "x")]])
    async with open_test_call(llm, services_changes=HOLD) as call:
        call.say("hours?")
        frames = await timed_reply(call)
    assert frames[:2] == [(0.1, "Sure,", False), (0.16, " we open", False)]
    text = "".join(token for _, token, _ in frames)
    assert text == "Sure, we open" + APOLOGY_CUT
    assert call.history[-1]["content"] == [{"text": "Sure, we open" + APOLOGY_CUT}]


def test_the_hold_is_a_setting_with_a_bound() -> None:
    assert Settings().token_hold_ms == 100
    assert Settings.model_validate({"TOKEN_HOLD_MS": "0"}).token_hold_ms == 0
    with pytest.raises(ValueError, match="TOKEN_HOLD_MS"):
        Settings.model_validate({"TOKEN_HOLD_MS": "5000"})


async def test_chunks_through_the_server_and_the_real_bedrock_backend(
        tmp_path: Path, aws_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Deltas from Bedrock's event stream (a worker thread per stream) under the hold's
    deadlines: every word arrives once, in order, the first clause delta by delta."""
    deltas = ["Sure,", " we", " bake", " thin", " crust", " and", " thick", " crust", " pies",
              " every", " day", " of", " the", " week", " from", " eleven", " until", " nine"]
    async with running_fake_bedrock(responder=lambda request: text_reply(
            deltas, gap_s=0.03)) as bedrock:
        monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", bedrock.endpoint_url)
        settings = make_settings(tmp_path, LLM="bedrock", AWS_REGION="us-east-1")
        assert settings.token_hold_ms == 100
        with trio.fail_after(30):
            async with running_server(settings) as server:
                async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                    await call.say("what crusts do you have?")
                    reply = await call.read_reply()
                    await call.hang_up()
                await server.runtime.calls.wait_idle()
    assert reply.closed
    assert reply.text == "".join(deltas)
    assert reply.tokens[0] == "Sure,"                     # the first clause, as it came
    assert len(reply.tokens) < len(deltas)                # the rest in chunks
    assert bedrock.violations == []


async def _cut_as_the_window_expires() -> tuple[str | None, str, str]:
    """One turn whose hold window is due at 0.33 s, cancelled at 0.33 s from another task:
    (the turn's recorded cut_by, the text sent, the history's assistant text)."""
    llm = FakeLLM([[0.2, TextDelta("Sure,"), 0.03, TextDelta(" we"), 10.0, TextDelta(" open")]])
    out_send, out_recv = trio.open_memory_channel[Any](math.inf)
    tools_send, _ = trio.open_memory_channel[Any](0)
    history = History(())
    history.add_user_text("hours?")
    summaries: list[dict[str, Any]] = []
    ctx = CallContext(call_sid="CA1", use_case=plain_use_case(), model_id="m",
                      system_prompt="x", llm=llm, history=history, outbound=out_send,
                      tools=tools_send, token_hold_s=0.1, on_turn=summaries.append)
    start = trio.current_time()
    turn_scope = trio.CancelScope()

    async def the_turn() -> None:
        with turn_scope:
            await run_turn(ctx, TurnPlan(), received_at=trio.current_time())

    async def barge_in() -> None:
        await trio.sleep_until(start + 0.33)         # " we" was held at 0.23: due now
        turn_scope.cancel(reason="barge-in")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(the_turn)
        nursery.start_soon(barge_in)
    (summary,) = summaries
    frames = [out_recv.receive_nowait()
              for _ in range(out_recv.statistics().current_buffer_used)]
    sent = "".join((f.frame if isinstance(f, Timed) else f).token for f in frames)
    return summary["cut_by"], sent, history.last_assistant_text()


async def test_a_cancel_as_the_window_expires_keeps_the_turns_reason(
        autojump_clock: Any) -> None:
    """The turn's cancel and its hold window's deadline in the same scheduler tick: the turn
    is still recorded as cut by its own cancel. trio runs a tick's tasks in random order, so
    the race is tried many times."""
    for _ in range(24):
        cut_by, sent, recorded = await _cut_as_the_window_expires()
        assert cut_by == "barge-in"
        assert sent in ("Sure,", "Sure, we")     # " we" went out if the window won the tick
        assert recorded == sent                  # what was sent, never what was held


# ------------------------------------------- streams that hand over what has arrived

def scripted(text: str, *, first_ms: int = 200, gap_ms: int = 30) -> ScriptedLLM:
    """The offline model: its stream can hand over every token due by now at once."""
    return ScriptedLLM({"test": ScriptedConfig(fallback=text, first_token_delay_ms=first_ms,
                                               token_delay_ms=gap_ms)})


async def test_held_text_is_read_once_a_window_and_sent_in_one_frame(
        autojump_clock: Any) -> None:
    """With a stream that has ``take_ready`` the turn sleeps through the window and takes
    every token that came in it: one wake and one frame per window, not one per token. The
    first clause is untouched; the reply's last frame carries last: true."""
    llm = scripted("We open at nine, and close at ten every night of the week.")
    async with open_test_call(llm, services_changes=HOLD) as call:
        call.say("when are you open?")
        frames = await timed_reply(call)
    assert frames == [
        (0.2, "We", False), (0.23, " open", False), (0.26, " at", False),
        (0.29, " nine,", False),                   # the first clause, as it came
        (0.42, " and close at ten", False),        # " and" at 0.32: the window ends 0.42
        (0.52, " every night of", False),          # came 0.44-0.50, sent at 0.52
        (0.62, " the week.", True),                # the end came in this window too
    ]
    assert call.history[-1]["content"] == [
        {"text": "We open at nine, and close at ten every night of the week."}]


async def test_a_cut_inside_a_read_window_sends_and_records_nothing_more(
        autojump_clock: Any) -> None:
    llm = scripted("Sure, we open at nine and close at ten tonight.")
    async with open_test_call(llm, services_changes=HOLD) as call:
        call.say("when are you open?")
        assert (await call.frame())["token"] == "Sure,"
        await trio.sleep_until(0.3)                # " we" is held; the rest not read yet
        call.interrupt(heard=None)
        await trio.testing.wait_all_tasks_blocked()
        assert call.socket.pending() == [{"type": "text", "token": "", "last": True}]
        assert llm.statistics().streams_open == 0  # the stream is closed
        await trio.sleep(5)
        assert call.socket.pending() == []
    assert call.history[-1]["content"] == [{"text": "Sure,"}]


async def test_scripted_take_ready_keeps_the_models_own_pace(autojump_clock: Any) -> None:
    """Tokens nobody read are still due when the model made them: reading late takes them
    all, and the next comes a gap after the last one's due time, not after the read."""
    llm = scripted("one two three four five", first_ms=100, gap_ms=50)
    request = LLMRequest(call_sid="CA1", use_case="test", model_id="m", system=("x",),
                         messages=({"role": "user", "content": [{"text": "count"}]},))
    async with llm.stream(request) as events:
        assert isinstance(events, HeldReads)
        await trio.sleep_until(0.22)
        first = await events.take_ready()              # due 0.10, 0.15, 0.20
        assert await events.take_ready() == []         # nothing more yet
        fourth = await events.receive()                # due 0.25
        at_fourth = trio.current_time()
        await trio.sleep_until(1.0)
        rest = await events.take_ready()
    assert first == [TextDelta("one"), TextDelta(" two"), TextDelta(" three")]
    assert (fourth, at_fourth) == (TextDelta(" four"), pytest.approx(0.25))
    assert rest[0] == TextDelta(" five")
    end = rest[1]
    assert isinstance(end, StreamEnd)
    assert end.first_token_s == pytest.approx(0.1)


async def test_first_clause_tokens_that_arrived_together_go_in_one_frame(
        autojump_clock: Any) -> None:
    """A burst (the model's, or a turn's task running late on a loaded machine): the first
    clause's tokens that had arrived when its first was read go in one frame, not one each
    (a frame costs the writer and hypercorn ~135 Python frames, whatever its size); the
    clause rule still splits them. TOKEN_HOLD_MS=0 stays one frame per token."""
    text = "We open at nine, and close at ten."
    async with open_test_call(scripted(text, gap_ms=0), services_changes=HOLD) as call:
        call.say("when are you open?")
        frames = await timed_reply(call)
    assert frames == [(0.2, "We open at nine,", False), (0.2, " and close at ten.", False),
                      (0.2, "", True)]
    assert call.history[-1]["content"] == [{"text": text}]
    async with open_test_call(scripted(text, gap_ms=0),
                              services_changes={"token_hold_s": 0.0}) as call:
        call.say("when are you open?")
        frames = await timed_reply(call)
    assert [token for _, token, _ in frames] == [
        "We", " open", " at", " nine,", " and", " close", " at", " ten.", ""]
