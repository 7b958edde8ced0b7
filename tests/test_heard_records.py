"""What the history records when the caller cuts in, in the corners a review of the actors
(2026-12-05) found wrong: a re-prompt or goodbye that merges into the reply before it, an
apology after a model error, a key entry the use case ignores, and the last words of a reply
that the writer withheld after the turn had recorded them; and (review s14) tokensPlayed of a
reply still playing when the next turn started, a frame the writer could not send, and words
the writer dropped after a tool's ``end``. Each failed before its fix.

On trio's virtual clock, with the test playing Twilio (``open_test_call``) or, where the race
is between two actors, playing the relay writer itself.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from actors import call_timers, llm_streamer, relay_writer, tool_executor
from actors.context import CallContext
from actors.history import History
from actors.messages import BargeIn, EndCall, Outgoing, Text, Timed, TurnCommand, UserSaid
from actors.relay_writer import WriterStats
from actors.unanswered_words import MAX_UNANSWERED_CHARS
from tests.breaking_socket import hours_on_a_socket_that_breaks
from tests.call_harness import open_test_call, plain_use_case
from tests.fakes import FakeLLM, MemorySocket, MemoryStore, WallClock, tool_use, words
from voiceagent.errors import ModelStreamFailed
from voiceagent.llm.base import TextDelta
from voiceagent.llm.converse import converse_problems
from voiceagent.relay.outbound import End
from voiceagent.tools.base import ToolDefinition
from voiceagent.tools.registry import ToolRegistry

REPLY = "We open at nine and close at ten tonight."


async def test_a_cut_reprompt_keeps_the_reply_before_it_whole(autojump_clock: Any) -> None:
    """The re-prompt merges into the reply's message (roles alternate). A barge-in into it
    cut nothing before: the mark stood after that message, so the whole re-prompt stayed."""
    llm = FakeLLM([words(REPLY)])
    async with open_test_call(llm, services_changes={"idle_reprompt_s": 5.0}) as call:
        call.say("hours?")
        await call.reply()
        text, _ = await call.reply()                    # five silent seconds later
        assert text == call_timers.REPROMPT
        call.interrupt(heard="Are you")
        await trio.testing.wait_all_tasks_blocked()
        assert call.history[-1] == {"role": "assistant",
                                    "content": [{"text": REPLY}, {"text": "Are you"}]}
    assert call.writer.persisted[-1][3]["interrupted"] is True
    assert not llm.violations


async def test_a_cut_goodbye_cuts_only_the_goodbye(autojump_clock: Any) -> None:
    """The goodbye of a draining server, cut by the caller: before, the heard words were
    matched from the reply's start, so the reply was replaced by the goodbye's first words."""
    llm = FakeLLM([words(REPLY)])
    async with open_test_call(llm) as call:
        call.say("hours?")
        await call.reply()
        call.services.end_calls.set()
        text, _ = await call.reply()
        assert text.startswith(call_timers.DRAINING[:20])
        call.interrupt(heard="I'm sorry, we have")
        await trio.testing.wait_all_tasks_blocked()
        assert call.history[-1] == {"role": "assistant", "content": [
            {"text": REPLY}, {"text": "I'm sorry, we have"}]}


class GatedSocket(MemorySocket):
    """Twilio's side, slow to take one frame: the writer's send of the first frame holding
    ``when`` waits until the test releases it."""

    def __init__(self, when: str) -> None:
        super().__init__()
        self.when = when
        self.held = trio.Event()
        self.release = trio.Event()

    async def send(self, text: str) -> None:
        if self.when in text and not self.release.is_set():
            self.held.set()
            await self.release.wait()
        await super().send(text)


async def test_a_barge_in_during_the_apology_records_what_was_heard(
        autojump_clock: Any) -> None:
    """The model failed after "We open"; the caller cut into the apology that followed. The
    cut used to leave the turn's words out of the history altogether."""
    socket = GatedSocket("Sorry")
    llm = FakeLLM([[0.1, TextDelta("We open"),
                    ModelStreamFailed("modelStreamErrorException", "x")],
                   words("Back again.")])
    async with open_test_call(llm, socket=socket) as call:
        call.say("hours?")
        await socket.held.wait()                # the apology's first word is on its way
        call.interrupt(heard="We open")
        await trio.testing.wait_all_tasks_blocked()
        socket.release.set()
        await trio.sleep(1)
        assert call.history[-2:] == (
            {"role": "user", "content": [{"text": "hours?"}]},
            {"role": "assistant", "content": [{"text": "We open"}]})
        assert call.report.turns.model_errors == 1
        call.say("hours please")
        while (await call.reply())[0] != "Back again.":
            pass
    assert not llm.violations


async def test_an_ignored_key_entry_does_not_cut_the_reply(autojump_clock: Any) -> None:
    """A key with no handler, in a use case that keeps keys from the model, starts no turn;
    before, it still cancelled the reply in flight, which Twilio (interruptible "speech")
    went on playing up to where our text stopped."""
    use_case = plain_use_case(dtmf={"handlers": {"1": {"reply": "We open at nine."}},
                                    "default_to_model": False})
    llm = FakeLLM([words(REPLY, gap_s=0.5)])
    async with open_test_call(llm, use_case=use_case) as call:
        call.say("hours?")
        assert (await call.frame())["token"] == "We"
        call.dtmf("5")
        call.dtmf("#")                          # an entry, "5": no handler, not for the model
        text, _ = await call.reply()
        assert "We" + text == REPLY
        assert call.report.turns.superseded == 0
    assert call.history[-2:] == (
        {"role": "user", "content": [{"text": "hours?"}]},
        {"role": "assistant", "content": [{"text": REPLY}]})


def _streamer_alone(nursery: trio.Nursery, llm: FakeLLM,
                    outbound: trio.MemorySendChannel[Outgoing],
                    commands: trio.MemoryReceiveChannel[TurnCommand]) -> CallContext:
    """The streamer of a plain use case with TOKEN_HOLD_MS 200, no reader or writer: the
    test plays those."""
    use_case = plain_use_case()
    env = tool_executor.ToolEnv(call_sid="CA1", use_case=use_case, registry=ToolRegistry(),
                                store=MemoryStore(), outbound=outbound.clone())
    ctx = CallContext(call_sid="CA1", use_case=use_case, model_id="test-model",
                      system_prompt=use_case.prompt, llm=llm, history=History(),
                      outbound=outbound, tools=tool_executor.ToolExecutor(nursery, env),
                      token_hold_s=0.2)
    nursery.start_soon(lambda: llm_streamer.run(commands=commands, ctx=ctx,
                                                persist=lambda sealed: None))
    return ctx


async def _cut_as_the_last_frame_is_checked(out_recv: trio.MemoryReceiveChannel[Outgoing],
                                            ctx: CallContext) -> list[str]:
    """Play the writer up to the reply's last frame (with the held text), sending the
    others (the tokens returned); then put three things in this order: the turn records
    that frame, the reader reads an interrupt, the writer checks the frame and withholds
    it (in a call it is up to the scheduler)."""
    sent: list[str] = []
    async for outgoing in out_recv:
        if isinstance(outgoing, Timed):
            outgoing.on_sent(trio.current_time())
            outgoing = outgoing.frame
        assert isinstance(outgoing, Text)
        if outgoing.last and outgoing.token:
            await trio.testing.wait_all_tasks_blocked()     # the turn recorded it
            ctx.marks.cut()                                 # the reader reads an interrupt
            ctx.marks.withhold(outgoing.token)              # then the writer checks
            break
        sent.append(outgoing.token)
    return sent


async def test_words_the_writer_withholds_after_the_turn_recorded_them_are_not_kept(
        autojump_clock: Any) -> None:
    """With TOKEN_HOLD_MS, a reply's last frame carries the held text. The turn hands it to
    the writer and records it; if the reader reads an interrupt before the writer checks the
    frame, the writer withholds it, unheard. The test plays the writer to put the three in
    that order (in a call it is up to the scheduler). Twilio says nothing of what was heard,
    so what was sent counts: the withheld words must not be in the history."""
    out_send, out_recv = trio.open_memory_channel[Outgoing](0)
    commands_send, commands = trio.open_memory_channel[TurnCommand](0)
    llm = FakeLLM([words("Sure. We open at nine and close at ten", gap_s=0.01)])
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            ctx = _streamer_alone(nursery, llm, out_send, commands)
            async with commands_send:
                await commands_send.send(UserSaid("hours?", received_at=0.0))
                sent = await _cut_as_the_last_frame_is_checked(out_recv, ctx)
                assert "".join(sent) == "Sure."
                assert ctx.history.last_assistant_text().endswith("close at ten")
                await commands_send.send(BargeIn(heard=None))
                await trio.testing.wait_all_tasks_blocked()
                assert ctx.history.messages[-1] == {"role": "assistant",
                                                    "content": [{"text": "Sure."}]}
                await commands_send.send(BargeIn(heard=None))       # once only
                await trio.testing.wait_all_tasks_blocked()
                assert ctx.history.messages[-1]["content"] == [{"text": "Sure."}]
            nursery.cancel_scope.deadline = trio.current_time() + 5
    assert converse_problems(ctx.history.for_request()) == []


async def _drain_between_cut_and_barge_in(heard: str | None, *, recorded: bool,
                                          then_cut: str | None = None) -> CallContext:
    """The reply's last frame is withheld as the reader reads an interrupt (as above); a
    drain's (or the length limit's) ``EndCall`` reaches the streamer before the handler's
    ``BargeIn`` does, so the goodbye starts between the two (``recorded``: and has said its
    words and recorded them before the barge-in is taken). ``then_cut``: the caller then
    cuts the goodbye too, hearing that much of it."""
    out_send, out_recv = trio.open_memory_channel[Outgoing](0)
    commands_send, commands = trio.open_memory_channel[TurnCommand](0)
    llm = FakeLLM([words("Sure. We open at nine and close at ten", gap_s=0.01)])
    later: list[str] = []
    goodbye_sent = trio.Event()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            ctx = _streamer_alone(nursery, llm, out_send, commands)

            async def writer_after_the_cut() -> None:
                async for outgoing in out_recv:
                    frame = outgoing.frame if isinstance(outgoing, Timed) else outgoing
                    if isinstance(frame, Text) and frame.token:
                        ctx.marks.spoke()       # as the writer does as it sends a word
                        later.append(frame.token)
                        goodbye_sent.set()
                        if not recorded:        # Twilio slow to take it: the turn waits
                            await trio.sleep(1)

            async with commands_send:
                await commands_send.send(UserSaid("hours?", received_at=0.0))
                await _cut_as_the_last_frame_is_checked(out_recv, ctx)
                nursery.start_soon(writer_after_the_cut)
                await commands_send.send(EndCall("Goodbye.", "server-draining"))
                await goodbye_sent.wait()
                await trio.testing.wait_all_tasks_blocked()
                assert (ctx.history.messages[-1]["content"][-1] == {"text": "Goodbye."}) \
                    == recorded
                await commands_send.send(BargeIn(heard=heard))
                await trio.testing.wait_all_tasks_blocked()
                if then_cut is not None:
                    await trio.sleep(2)                 # the goodbye recorded
                    ctx.marks.cut()
                    await commands_send.send(BargeIn(heard=then_cut))
                    await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.deadline = trio.current_time() + 5
    assert later == ["Goodbye."]                # the caller never cut it: all of it went out
    assert converse_problems(ctx.history.for_request()) == []
    return ctx


@pytest.mark.parametrize("recorded", [True, False])
async def test_a_drain_between_an_interrupt_and_its_barge_in_keeps_the_unheard_words_out(
        recorded: bool, autojump_clock: Any) -> None:
    """Found by a review helper (helper-15): the goodbye turn's start reset
    ``CutMarks.withheld`` before the barge-in took it, so the withheld words stayed in the
    history; and the barge-in cancelled the goodbye, which the caller never cut (only its
    ``end`` went out). The barge-in now acts on the turn the reader cut."""
    ctx = await _drain_between_cut_and_barge_in(None, recorded=recorded)
    assert ctx.history.messages[1:] == (
        {"role": "assistant", "content": [{"text": "Sure."}, {"text": "Goodbye."}]},)


@pytest.mark.parametrize("recorded", [True, False])
async def test_heard_words_cut_the_reply_but_not_a_goodbye_begun_after_the_interrupt(
        recorded: bool, autojump_clock: Any) -> None:
    """Twilio says what was heard of the reply; the goodbye merged into the reply's message
    went out after the interrupt. Before, the heard words were matched against the reply
    and the goodbye together, and the goodbye was cut away."""
    ctx = await _drain_between_cut_and_barge_in("Sure. We open", recorded=recorded)
    assert ctx.history.messages[1:] == ({"role": "assistant", "content": [
        {"text": "Sure. We open"}, {"text": "Goodbye."}]},)


async def test_a_reply_heard_not_at_all_leaves_the_goodbye_in_its_place(
        autojump_clock: Any) -> None:
    """Nothing of the reply was heard: its message goes, the goodbye takes its place, and a
    second interrupt, into the goodbye, cuts the goodbye where it now stands."""
    ctx = await _drain_between_cut_and_barge_in("", recorded=True, then_cut="Good")
    assert ctx.history.messages[1:] == ({"role": "assistant", "content": [{"text": "Good"}]},)


async def test_an_interrupt_into_an_earlier_reply_still_playing_cuts_that_reply(
        autojump_clock: Any) -> None:
    """With reportInputDuringAgentSpeech, a prompt ("mhm") can start a turn while Twilio
    still plays the reply before it; the new reply queues behind. An interrupt then says
    what was heard of the reply playing, the earlier one: that reply is cut to it, and the
    queued one, which Twilio threw away unheard, is dropped. Before, the heard words were
    matched against the newest reply and replaced it."""
    llm = FakeLLM([words(REPLY), words("Sure, anything else?")])
    async with open_test_call(llm) as call:
        call.say("hours?")
        await call.reply()
        call.say("mhm")
        text, _ = await call.reply()
        assert text == "Sure, anything else?"
        call.interrupt(heard="We open at nine")
        await trio.testing.wait_all_tasks_blocked()
        assert call.history[-3:] == (
            {"role": "user", "content": [{"text": "hours?"}]},
            {"role": "assistant", "content": [{"text": "We open at nine"}]},
            {"role": "user", "content": [{"text": "mhm"}]})
        call.say("what about Sunday?")
        await call.reply()
    assert not llm.violations


async def test_an_interrupt_into_the_newest_reply_leaves_the_earlier_one_whole(
        autojump_clock: Any) -> None:
    llm = FakeLLM([words(REPLY), words("Sure, anything else?")])
    async with open_test_call(llm) as call:
        call.say("hours?")
        await call.reply()
        call.say("mhm")
        await call.reply()
        call.interrupt(heard="Sure, any")
        await trio.testing.wait_all_tasks_blocked()
        assert call.history[-3:] == (
            {"role": "assistant", "content": [{"text": REPLY}]},
            {"role": "user", "content": [{"text": "mhm"}]},
            {"role": "assistant", "content": [{"text": "Sure, any"}]})


def _played(text: str) -> dict[str, Any]:
    return {"type": "info", "name": "tokensPlayed", "value": text}


def _texts(message: dict[str, Any]) -> list[str]:
    return [block["text"] for block in message["content"] if "text" in block]


async def test_tokens_played_of_a_reply_still_playing_are_not_taken_for_the_next_reply(
        autojump_clock: Any) -> None:
    """Twilio was still playing reply 1 when the caller's "mhm" (reported during agent
    speech, not an interrupt) started turn 2; its reply queued behind reply 1. The rest of
    reply 1 played (tokensPlayed), then the caller cut in as reply 2 began, and the interrupt
    did not say what was heard. The handler emptied its tokensPlayed record when turn 2
    started, so the barge-in's heard words were the *tail* of reply 1; they fit no turn, and
    the newest turn's reply was replaced by them: the history said the agent answered "mhm"
    with "close at ten tonight." (words of the earlier reply), and reply 1 was kept whole
    (review s14)."""
    reply_1 = "We open at nine and close at ten tonight."
    reply_2 = "Is there anything else I can help you with today?"
    llm = FakeLLM([words(reply_1), words(reply_2)])
    async with open_test_call(llm) as call:
        call.say("hours?")
        assert (await call.reply())[0] == reply_1
        call.socket.push(_played("We open at nine and"))
        call.say("mhm")
        assert (await call.reply())[0] == reply_2
        call.socket.push(_played("close at ten tonight."))  # reply 1 played to its end
        call.interrupt(heard=None)                  # cut in as reply 2 began
        await trio.testing.wait_all_tasks_blocked()
        said = [(m["role"], _texts(m)) for m in call.history]
    # reply 1 was heard whole; of reply 2, nothing Twilio reported
    assert said[-2:] == [("assistant", [reply_1]), ("user", ["mhm"])], said
    assert [entry["chat"] for entry in call.writer.stored()] == list(call.history)


async def test_tokens_played_that_fit_no_reply_leave_what_was_sent(autojump_clock: Any) -> None:
    """A tokensPlayed record that fits none of the replies that may be playing (it began in
    the middle of one) says nothing usable about what was heard: the reply keeps what was
    sent, and is not replaced by those words."""
    llm = FakeLLM([words(REPLY)])
    async with open_test_call(llm) as call:
        call.say("hours?")
        await call.reply()
        call.socket.push(_played("ten tonight."))
        call.interrupt(heard=None)
        await trio.testing.wait_all_tasks_blocked()
    assert call.history[-1] == {"role": "assistant", "content": [{"text": REPLY}]}


async def test_a_frame_the_writer_could_not_send_is_not_recorded_as_said(
        autojump_clock: Any) -> None:
    """The relay socket broke mid-reply (a relay failure: Twilio reconnects the call and the
    next session resumes the stored history). The writer had taken the next frame from the
    turn and failed to send it; the turn counted it as said all the same, so the stored
    reply held words that never left the server (review s14)."""
    llm = FakeLLM([words(REPLY, gap_s=0.5)])
    async with open_test_call(llm) as call:
        call.say("hours?")
        sent = [(await call.frame())["token"] for _ in range(3)]     # "We open at"
        call.socket.hung_up = True          # the connection is gone: sends fail from now
        await trio.sleep(2)
        call.socket.hang_up()
        with trio.fail_after(10):
            await call.done.wait()
    assert "".join(sent) == "We open at"
    stored = [entry["chat"] for entry in call.writer.stored()]
    assert stored[-1] == {"role": "assistant", "content": [{"text": "We open at"}]}, stored[-1]
    assert stored == list(call.history)


async def test_a_last_frame_that_failed_after_the_turn_recorded_it_is_not_stored(
        autojump_clock: Any) -> None:
    """The reply's last frame (its held words, ``last: true``) was taken by the writer, the
    turn ended and recorded it, and only then did the send fail: no barge-in follows a
    broken socket to take the words off, so they come off when the call's actors are done,
    before the last write to the store."""
    llm = FakeLLM([words("We open at nine, and close at ten", gap_s=0.05)])
    call, sent = await hours_on_a_socket_that_breaks(llm)
    assert sent == "We open at nine,"
    stored = [entry["chat"] for entry in call.writer.stored()]
    assert stored[-1] == {"role": "assistant", "content": [{"text": "We open at nine,"}]}
    assert stored == list(call.history)


async def test_words_of_a_turn_after_a_tool_sent_end_are_not_recorded(
        autojump_clock: Any) -> None:
    """A tool that is not an ending one sent ``end``; the model's next round still spoke,
    and the writer dropped every word of it (nothing goes after ``end``): they were never
    heard, so neither history nor store holds them."""
    async def hang_up(ctx: Any, args: Any) -> dict[str, Any]:
        await ctx.send(End(handoff_data='{"reasonCode": "end-call"}'))
        return {"status": "ended"}

    registry = ToolRegistry([ToolDefinition("hangUp", hang_up, timeout_s=5)])
    llm = FakeLLM([tool_use("tu_x", "hangUp", before="Goodbye."),
                   words("Is there anything else?")])
    use_case = plain_use_case(tools=[{"name": "hangUp", "description": "Hang up."}])
    async with open_test_call(llm, use_case=use_case, registry=registry) as call:
        call.say("bye")
        await trio.sleep(3)
        call.socket.hang_up()
        with trio.fail_after(10):
            await call.done.wait()
    assert call.report.writer.dropped_after_end > 0
    said = [block.get("text") for m in call.history if m["role"] == "assistant"
            for block in m["content"] if "text" in block]
    assert said[-1] == "Goodbye.", said
    assert [entry["chat"] for entry in call.writer.stored()] == list(call.history)
    assert converse_problems(call.report.history.for_request()) == []  # type: ignore[union-attr]


async def test_a_caller_who_keeps_cutting_in_does_not_grow_the_request(
        autojump_clock: Any) -> None:
    """Each reply cut before a word was heard leaves the caller's words unanswered, and the
    next prompt merges into them: 40 such rounds grew one message to 60,000 characters, sent
    with every model request. It is capped; the newest words are kept."""
    llm = FakeLLM([words(REPLY, gap_s=0.5)])
    async with open_test_call(llm) as call:
        for n in range(40):
            call.say(f"round {n} " + "blah " * 300)
            await call.frame()
            call.interrupt(heard="")
            await trio.sleep(1)
        await trio.testing.wait_all_tasks_blocked()
        last = call.history[-1]
        assert last["role"] == "user"
        assert sum(len(b["text"]) for b in last["content"]) <= MAX_UNANSWERED_CHARS
        assert last["content"][-1]["text"].startswith("round 39 ")
        assert len(str(llm.requests[-1].messages)) < 2 * MAX_UNANSWERED_CHARS


async def test_a_reply_cut_once_is_never_taken_for_one_still_playing(
        autojump_clock: Any) -> None:
    """After a barge-in Twilio has thrown away everything queued: the reply it cut cannot be
    the one an interrupt into the next turn is about, even when the heard words fit it
    better (here, Twilio's rendering of the new reply differs from our text)."""
    llm = FakeLLM([words(REPLY), words("Sure, 2 large pizzas.")])
    async with open_test_call(llm) as call:
        call.say("hours?")
        await call.reply()
        call.interrupt(heard="We open at nine and close")
        call.say("and pizza?")
        await call.reply()
        call.interrupt(heard="We")          # fits the cut reply, not "Sure, ..."
        await trio.testing.wait_all_tasks_blocked()
        assert call.history[-3:] == (
            {"role": "assistant", "content": [{"text": "We open at nine and close"}]},
            {"role": "user", "content": [{"text": "and pizza?"}]},
            {"role": "assistant", "content": [{"text": "We"}]})


async def test_a_cut_into_an_earlier_turn_is_stored_again(autojump_clock: Any) -> None:
    """The earlier turn's message was already handed to the store when the next prompt came;
    cutting it to what was heard must store it again, or a resumed call (and the transcript)
    would keep the words the caller never heard. Found by a property test."""
    from tests.test_history_property import TOOLS, registry

    llm = FakeLLM([tool_use("tu_1", "placeOrder", before="Placing that"),
                   words("Sure thing.")])
    async with open_test_call(llm, use_case=plain_use_case(tools=TOOLS),
                              registry=registry()) as call:
        call.say("order pizza")
        await trio.sleep(0.5)                   # "Placing that" said, the order placing
        call.say("hi")                          # a "mhm" while it still plays
        await trio.testing.wait_all_tasks_blocked()
        call.interrupt(heard="Placing")
        await trio.sleep(2)
        assert call.history[2]["content"][0] == {"text": "Placing"}
        assert "toolResult" in call.history[3]["content"][0]
    assert [entry["chat"] for entry in call.writer.stored()] == list(call.history)


async def test_an_interrupt_into_a_reply_playing_behind_two_newer_turns_cuts_that_reply(
        autojump_clock: Any) -> None:
    """A's reply still plays; the caller says "mhm" (turn B starts, says nothing yet) and
    then "yeah" (turn C supersedes B). Twilio still plays A, C queues behind it. The
    interrupt says what was heard of A: A must be cut to it and C dropped. Found by a review
    helper: only the two newest starts were kept (B's and C's, the same), so A was no
    candidate and C's reply was replaced by A's words while A stayed whole."""
    with trio.fail_after(60):
        llm = FakeLLM([words(REPLY), words("Sure, anything else?")])
        async with open_test_call(llm) as call:
            call.say("hours?")
            await call.reply()                  # A sent in full; Twilio still plays it
            call.say("mhm")                     # B starts (first token due 0.2 s later)
            await trio.sleep(0.1)
            call.say("yeah")                    # C supersedes B before B said a word
            text, _ = await call.reply()
            assert text == "Sure, anything else?"
            call.interrupt(heard="We open at nine")
            await trio.testing.wait_all_tasks_blocked()
            assert call.history[-3:] == (
                {"role": "user", "content": [{"text": "hours?"}]},
                {"role": "assistant", "content": [{"text": "We open at nine"}]},
                {"role": "user", "content": [{"text": "mhm"}, {"text": "yeah"}]})


def _resumable(call: Any) -> list[dict[str, Any]]:
    """What a reconnect would resume from the store (``saved_history.saved_history``), checked
    as it checks it ("saved history unusable, starting fresh" when it fails)."""
    entries = call.writer.stored()
    resumed = [entry["chat"] for entry in entries]
    metas = [{**entry["meta"], "at_ms": entry["at_ms"]} for entry in entries]
    assert converse_problems(History.resumed(resumed, metas).for_request()) == []
    return resumed


@asynccontextmanager
async def _an_order_still_playing(monkeypatch: Any) -> AsyncIterator[Any]:
    """A call whose last turn ("Placing that", a side-effect tool, "All done, ...") was
    sent in full and still plays at Twilio; each message's at_ms (its store key) apart."""
    import actors.history as history_module
    from tests.test_history_property import TOOLS, registry

    monkeypatch.setattr(history_module, "time", WallClock)
    with trio.fail_after(60):
        llm = FakeLLM([tool_use("tu_1", "placeOrder", before="Placing that"),
                       words("All done, anything else?"), words("Sure thing.")])
        async with open_test_call(llm, use_case=plain_use_case(tools=TOOLS),
                                  registry=registry()) as call:
            call.say("order pizza")
            await call.reply()
            await trio.sleep(2)
            yield call


async def test_a_cut_into_an_earlier_tool_turn_keeps_each_stored_message_under_its_key(
        autojump_clock: Any, monkeypatch: Any) -> None:
    """An earlier turn (text + side-effect tool, then "All done ...") still plays when "mhm"
    starts the next one; an interrupt cuts the earlier turn to "Placing". _drop_empty drops
    the empty "All done" message and merges the "mhm" user message into the toolResult
    message, copying the later message's at_ms over the stored one's. The store keys an item
    by (at_ms, index): the toolResult message is written under a second key and the old item
    stays, so the stored conversation (what a reconnect resumes) has two user messages in a
    row and the toolResult twice, and a reconnect started afresh. Found by a review helper."""
    async with _an_order_still_playing(monkeypatch) as call:
        call.say("mhm")                         # while the earlier turn still plays
        await call.reply()
        call.interrupt(heard="Placing")
        await trio.testing.wait_all_tasks_blocked()
        assert converse_problems(call.report.history.for_request()) == []
    assert _resumable(call) == list(call.history)


async def test_a_stored_message_a_cut_drops_is_not_resumed(
        autojump_clock: Any, monkeypatch: Any) -> None:
    """As above, but "yeah" follows "mhm" before its reply, so the new turn's start hands
    "All done, ..." to the store first; the cut then drops it. Its item stayed: a reconnect
    resumed a reply the caller never heard, and once the next reply was stored under the
    same position, two assistant messages in a row (the saved history unusable). Found in
    the twelfth pass; the dropped item is now written over with a tombstone."""
    async with _an_order_still_playing(monkeypatch) as call:
        call.say("mhm")                         # while the earlier turn still plays
        await trio.sleep(0.1)
        call.say("yeah")                        # before the "mhm" turn said a word
        await call.reply()
        call.interrupt(heard="Placing")
        await trio.testing.wait_all_tasks_blocked()
        assert "All done" not in str(call.history)
        call.say("and a drink")                 # its start hands the cut to the store
        await call.reply()
        await trio.testing.wait_all_tasks_blocked()
    assert _resumable(call) == list(call.history)


async def test_an_interrupt_read_as_the_goodbye_starts_does_not_silence_it(
        autojump_clock: Any) -> None:
    """The reply still plays at Twilio when the server drains; the goodbye turn starts, and
    before a word of it is out the reader reads the caller's interrupt, which is about the
    reply. The goodbye was taken for the turn cut: all its words were withheld and only
    `end` went out, so the caller heard nothing before being hung up on. It now goes out
    whole after the interrupt, and the reply is cut to what was heard. Found by a review
    helper (helper-20)."""
    out_send, out_recv = trio.open_memory_channel[Outgoing](0)
    checked_send, checked = trio.open_memory_channel[Outgoing](0)
    commands_send, commands = trio.open_memory_channel[TurnCommand](0)
    socket = MemorySocket()
    llm = FakeLLM([words("Sure. We open at nine and close at ten tonight.", gap_s=0.01)])
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            ctx = _streamer_alone(nursery, llm, out_send, commands)

            async def writer_slow_to_look_at_the_goodbye() -> None:
                async with checked_send:
                    async for outgoing in out_recv:
                        frame = outgoing.frame if isinstance(outgoing, Timed) else outgoing
                        if isinstance(frame, Text) and frame.token.startswith("Goodbye"):
                            ctx.marks.cut()     # the reader reads an interrupt first
                        await checked_send.send(outgoing)

            nursery.start_soon(writer_slow_to_look_at_the_goodbye)
            nursery.start_soon(lambda: relay_writer.run(socket=socket, outbound=checked,
                                                        stats=WriterStats(), marks=ctx.marks))
            async with commands_send:
                await commands_send.send(UserSaid("hours?", received_at=0.0))
                await trio.sleep(2)                         # the reply is all out
                await commands_send.send(EndCall("Goodbye for now.", "server-draining"))
                await trio.testing.wait_all_tasks_blocked()
                await commands_send.send(BargeIn(heard="Sure. We open at nine"))
                await trio.sleep(2)
            nursery.cancel_scope.deadline = trio.current_time() + 5
    sent = [f.get("token") for f in socket.pending() if f["type"] in ("text", "end")]
    assert "Goodbye for now." in "".join(t for t in sent if t)
    assert ctx.history.messages[1:] == ({"role": "assistant", "content": [
        {"text": "Sure. We open at nine"}, {"text": "Goodbye for now."}]},)


class _SlowAtTheGoodbyeSocket(MemorySocket):
    """Twilio slow to take the goodbye's closing frame (two seconds: a congested link)."""

    def __init__(self) -> None:
        super().__init__()
        self.goodbye = False

    async def send(self, text: str) -> None:
        frame = json.loads(text)
        if "maintenance" in frame.get("token", ""):
            self.goodbye = True
        if self.goodbye and frame.get("type") == "text" and frame.get("last"):
            await trio.sleep(2)
        await super().send(text)


async def test_a_goodbye_sends_end_even_when_twilio_is_slow_to_take_it(
        autojump_clock: Any) -> None:
    """The goodbye's `end` was sent under the closer's one-second bound: with the writer
    still sending the goodbye's last frame, it was dropped, and nothing sent it again (the
    streamer is ending, the limit said): the call stayed open after the goodbye until the
    caller hung up. Found by a review helper (helper-21)."""
    socket = _SlowAtTheGoodbyeSocket()
    with trio.fail_after(60):
        async with open_test_call(FakeLLM([words("We open at nine.")]), socket=socket) as call:
            call.say("hours?")
            await call.reply()
            call.services.end_calls.set()
            text, frames = await call.reply()
            assert text.startswith(call_timers.DRAINING[:20])
            while frames[-1]["type"] != "end":
                frames.append(await call.frame())
    assert call.report.writer.ended
