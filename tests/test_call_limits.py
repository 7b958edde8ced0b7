"""Limits and hostile input at the call level, on trio's virtual clock: floods, absurd
prompts, silent callers, maximum duration, the server draining, tools that fail or hang."""

from __future__ import annotations

import math
import time
from dataclasses import replace
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing

from actors import interrupt_handler
from actors.call import END_CLOSE_S, CallPlan
from actors.call_timers import DRAINING, IDLE_GOODBYE, REPROMPT
from actors.end_signal import EndSignal
from actors.history import History
from actors.messages import (
    BargeIn,
    Inbound,
    Interrupt,
    Prompt,
    Setup,
    SpeakerEvent,
    TokensPlayed,
    TurnCommand,
    UserSaid,
)
from actors.played import MAX_PLAYED_CHARS, MAX_PLAYED_TURNS, Played
from tests.call_harness import open_test_call, plain_use_case
from tests.fakes import FakeLLM, tool_use, words
from voiceagent.llm.converse import converse_problems
from voiceagent.tools.base import ToolDefinition
from voiceagent.tools.registry import ToolRegistry


async def test_a_flood_of_prompts_costs_at_most_three_model_calls(autojump_clock: Any) -> None:
    llm = FakeLLM([words("Got it.")])
    async with open_test_call(llm) as call:
        for n in range(200):
            call.say(f"prompt number {n}")
        while (await call.reply())[0] != "Got it.":
            pass
    # two turns start at once (a quick correction is never delayed); the rest of the burst
    # waits out the gap and merges into one more
    assert len(llm.requests) <= 3
    assert llm.open_streams == 0
    said = " ".join(b["text"] for m in call.history if m["role"] == "user"
                    for b in m["content"])
    assert "prompt number 0" in said
    assert all(len(b["text"]) <= 2000 for m in call.history for b in m["content"])


async def test_a_flood_of_keys_costs_at_most_three_model_calls(autojump_clock: Any) -> None:
    """1,200 presses are 100 entries of twelve digits: they merge like prompts, the newest
    entry standing for the ones it replaced, and all are read before the caller hangs up."""
    llm = FakeLLM([words("Got it.")])
    async with open_test_call(llm) as call:
        for n in range(1200):
            call.dtmf(str(n % 10))
        while (await call.reply())[0] != "Got it.":
            pass
        await trio.testing.wait_all_tasks_blocked()
        assert call.socket.pending() == []            # no turn left to start
        await call.hang_up()
    assert len(llm.requests) <= 3
    assert call.report.turns.turns <= 3
    assert call.report.frames.received == 1 + 1200    # setup and every key
    assert call.history[-2]["content"][-1] == {
        "text": "(The caller pressed 890123456789 on the keypad.)"}


async def test_keys_and_prompts_flooding_together_merge_into_one_turn(
        autojump_clock: Any) -> None:
    llm = FakeLLM([words("Got it.")])
    use_case = plain_use_case(dtmf={"handlers": {"1": {"reply": "One."}}})
    async with open_test_call(llm, use_case=use_case) as call:
        for n in range(300):
            call.say(f"prompt {n}")
            call.dtmf("1")
        while (await call.reply())[0] != "Got it.":
            pass
    assert len(llm.requests) <= 3
    said = " ".join(b["text"] for m in call.history if m["role"] == "user"
                    for b in m["content"])
    assert said.startswith("prompt 0 (The caller pressed 1 on the keypad.) prompt 1 (The")
    assert all(len(b["text"]) <= 2000 for m in call.history for b in m["content"])


async def test_prompts_and_interrupts_flooding_together_cost_at_most_three_model_calls(
        autojump_clock: Any) -> None:
    """An interrupt that comes while a turn is held is about the speech already playing: it
    cuts that, and the held turn (words from both sides of it) still gets its answer."""
    llm = FakeLLM([words("Got it.")])
    async with open_test_call(llm) as call:
        for n in range(200):
            call.say(f"prompt {n}")
            call.interrupt(heard="")
        while (await call.reply())[0] != "Got it.":
            pass
    assert len(llm.requests) <= 3
    assert call.report.turns.barge_ins == 200
    assert llm.violations == []


async def test_keys_kept_from_the_model_stay_out_of_a_merged_turn(autojump_clock: Any) -> None:
    llm = FakeLLM([words("Got it.")])
    use_case = plain_use_case(dtmf={"default_to_model": False})
    async with open_test_call(llm, use_case=use_case) as call:
        for n in range(100):
            call.say(f"prompt {n}")
            call.dtmf("7")
            call.dtmf("#")
        while (await call.reply())[0] != "Got it.":
            pass
    said = " ".join(b["text"] for r in llm.requests for m in r.messages if m["role"] == "user"
                    for b in m["content"] if "text" in b)
    assert "prompt 99" in said
    assert "keypad" not in said


async def test_turns_start_at_most_two_per_gap_under_mixed_input(autojump_clock: Any) -> None:
    """Prompts and keys every 50 ms: each model call opens at least a gap after the one two
    before it, to the end."""
    llm = FakeLLM([words("Got it.", first_s=5.0)])
    async with open_test_call(llm) as call:
        for n in range(40):
            if n % 2:
                call.dtmf("5")
                call.dtmf("#")
            else:
                call.say(f"prompt {n}")
            await trio.sleep(0.05)
        await call.hang_up()
    starts = llm.opened_at
    assert len(starts) >= 10
    assert all(b - a >= 0.3 - 1e-9 for a, b in zip(starts[:-2], starts[2:], strict=True))


async def test_a_turn_held_when_the_caller_hangs_up_still_waits_for_the_gate(
        autojump_clock: Any) -> None:
    """The caller's last words still reach the transcript, and no faster than the gate."""
    in_send, in_recv = trio.open_memory_channel[Inbound](math.inf)
    cmd_send, cmd_recv = trio.open_memory_channel[TurnCommand](0)
    sent: list[tuple[str, float]] = []

    async def streamer() -> None:
        async for command in cmd_recv:
            assert isinstance(command, UserSaid)
            sent.append((command.text, trio.current_time()))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(streamer)
        nursery.start_soon(partial(interrupt_handler.run, inbound=in_recv, commands=cmd_send))
        start = trio.current_time()
        for n in range(3):
            in_send.send_nowait(Prompt(f"p{n}", received_at=trio.current_time()))
            await trio.testing.wait_all_tasks_blocked()
        await trio.sleep(0.1)
        in_send.close()                                  # hung up while p2 is held
    assert [(text, at - start) for text, at in sent] == [
        ("p0", 0.0), ("p1", 0.0), ("p2", pytest.approx(0.3))]


async def test_keys_at_a_steady_rate_start_at_most_two_turns_per_gap(
        autojump_clock: Any) -> None:
    """Not only a burst: a key every 20 ms for 3 s (handler replies, no model) is held to the
    same rate, and the last key still gets its answer."""
    use_case = plain_use_case(dtmf={"handlers": {"1": {"reply": "One."},
                                                 "2": {"reply": "Two."}}})
    async with open_test_call(FakeLLM([words("unused")]), use_case=use_case) as call:
        start = trio.current_time()
        for n in range(150):
            call.dtmf("1" if n < 149 else "2")
            await trio.sleep(0.02)
        while (await call.reply())[0] != "Two.":
            pass
        elapsed = trio.current_time() - start
    turns = call.report.turns.turns
    assert turns <= 2 * (elapsed / 0.3 + 1)
    assert turns < 150 / 2
    assert call.history[-1] == {"role": "assistant", "content": [{"text": "Two."}]}


async def test_two_quick_keys_act_at_once_and_a_third_waits_out_the_gap(
        autojump_clock: Any) -> None:
    use_case = plain_use_case(dtmf={"handlers": {d: {"reply": f"Key {d}."} for d in "123"}})
    async with open_test_call(FakeLLM([words("unused")]), use_case=use_case) as call:
        start = trio.current_time()
        for digit in "123":
            call.dtmf(digit)
            await trio.testing.wait_all_tasks_blocked()
        for digit, at in (("1", 0.0), ("2", 0.0), ("3", 0.3)):   # the first two at once
            assert (await call.reply())[0] == f"Key {digit}."
            assert trio.current_time() - start == pytest.approx(at)
    users = [m["content"][0]["text"] for m in call.history if m["role"] == "user"]
    assert users == [f"(The caller pressed {d} on the keypad.)" for d in "123"]


async def test_absurd_prompts_are_cleaned_and_capped(autojump_clock: Any) -> None:
    llm = FakeLLM([words("Okay.")])
    async with open_test_call(llm) as call:
        call.say("hello\x00\x07 there\x1b[31m " + "blah " * 10_000)
        await call.reply()
    text = llm.requests[0].messages[-1]["content"][0]["text"]
    assert text.startswith("hello   there [31m blah")
    assert len(text) <= 2000
    assert not any(ord(c) < 32 for c in text)


async def test_silent_caller_is_reprompted_then_bid_goodbye(autojump_clock: Any) -> None:
    llm = FakeLLM([words("Hi!")])
    async with open_test_call(llm, services_changes={"idle_reprompt_s": 10.0,
                                                     "max_reprompts": 2}) as call:
        start = trio.current_time()
        text, _ = await call.reply()
        assert text == REPROMPT
        assert trio.current_time() - start == pytest.approx(10.0)
        call.say("yes, sorry")                 # speaking resets the count
        await call.reply()
        for _ in range(2):
            assert (await call.reply())[0] == REPROMPT
        text, _ = await call.reply()
        assert text == IDLE_GOODBYE
        end = await call.frame()
        assert end == {"type": "end", "handoffData": '{"reasonCode": "caller-silent"}'}
    assert llm.requests[0].messages[-1]["content"][0]["text"] == "yes, sorry"


async def test_the_silence_timer_counts_from_the_end_of_the_agents_speech(
        autojump_clock: Any) -> None:
    """With speaker events, a reply that plays longer than IDLE_REPROMPT_S is not followed
    at once by "are you still there?": silence counts from when Twilio says the agent
    stopped. An "off" that never comes holds the timer back by MAX_AGENT_SPEECH_S at most."""
    from actors.call_timers import MAX_AGENT_SPEECH_S

    def agent(speaking: str) -> dict[str, Any]:
        return {"type": "info", "name": "agentSpeaking", "value": speaking}

    llm = FakeLLM([words("A long story " * 10, gap_s=0.01)])
    async with open_test_call(llm, services_changes={"idle_reprompt_s": 10.0}) as call:
        call.say("tell me a story")
        await call.reply()                      # streamed in a moment...
        call.socket.push(agent("on"))
        await trio.sleep(25)                    # ...and played for 25 s
        assert call.socket.pending() == []      # no reprompt while the agent speaks
        call.socket.push(agent("off"))
        off_at = trio.current_time()
        text, _ = await call.reply()
        assert text == REPROMPT
        assert trio.current_time() - off_at == pytest.approx(10.0)
        call.socket.push(agent("on"))           # the reprompt plays; "off" is lost
        on_at = trio.current_time()
        text, _ = await call.reply()
        assert text == REPROMPT
        assert trio.current_time() - on_at == pytest.approx(10.0 + MAX_AGENT_SPEECH_S)


async def test_speaker_events_read_while_a_turn_is_held_move_the_silence_timer(
        autojump_clock: Any) -> None:
    """A third prompt inside the turn gap is held, and what arrives meanwhile is read by the
    gate: an "agent on" among it used to be only logged, and the re-prompt then came while
    the agent still spoke."""
    llm = FakeLLM([words("Sure.")])
    async with open_test_call(llm, services_changes={"idle_reprompt_s": 10.0}) as call:
        for text in ("one", "two", "three"):
            call.say(text)                      # "three" waits out the gap...
        call.socket.push({"type": "info", "name": "agentSpeaking", "value": "on"})
        await trio.sleep(30)                    # ...and "on" is read while it waits
        assert REPROMPT not in "".join(
            f.get("token", "") for f in call.socket.pending() if f["type"] == "text")
        call.socket.push({"type": "info", "name": "agentSpeaking", "value": "off"})
        off_at = trio.current_time()
        while (await call.reply())[0] != REPROMPT:
            pass
        assert trio.current_time() - off_at == pytest.approx(10.0)


async def test_a_caller_waiting_for_a_slow_tool_is_not_reprompted_or_hung_up_on(
        autojump_clock: Any) -> None:
    """The caller is silent because the agent is working: a 70 s tool with IDLE_REPROMPT_S
    at 20. Re-prompts were skipped while the turn ran but still counted, so the third silence
    ended the call in the middle of the order with "I haven't heard from you"."""
    async def slow(ctx: Any, args: Any) -> dict[str, Any]:
        await trio.sleep(70)
        return {"status": "placed"}

    registry = ToolRegistry([ToolDefinition("placeOrder", slow, side_effect=True,
                                            timeout_s=90)])
    llm = FakeLLM([tool_use("tu_1", "placeOrder", before="Placing it."),
                   words("Your order is placed.")])
    use_case = plain_use_case(tools=[{"name": "placeOrder", "description": "x"}])
    async with open_test_call(llm, use_case=use_case, registry=registry,
                              services_changes={"idle_reprompt_s": 20.0}) as call:
        said_at = trio.current_time()
        call.say("order a pizza")
        text, frames = await call.reply()
        assert text == "Placing it. Your order is placed."
        assert all(f["type"] == "text" for f in frames)
        assert trio.current_time() - said_at > 70
        text, _ = await call.reply()                # the caller's silence starts now
        assert text == REPROMPT
        assert 80 <= trio.current_time() - said_at <= 100


async def test_maximum_call_duration_ends_politely(autojump_clock: Any) -> None:
    llm = FakeLLM([words("A very long story " * 20, gap_s=1.0)])
    async with open_test_call(llm, services_changes={"max_call_duration_s": 30.0}) as call:
        call.say("tell me everything")
        frames = []
        while (frame := await call.frame())["type"] != "end":
            frames.append(frame)
        assert trio.current_time() == pytest.approx(30.0)
        assert frame["handoffData"] == '{"reasonCode": "max-duration"}'
        spoken = "".join(f["token"] for f in frames)
        assert "time limit" in spoken
        assert sum(1 for f in frames if f["last"]) == 2    # the story's cycle, the goodbye's
        call.say("wait!")                                  # after end: nothing more is sent
        await trio.testing.wait_all_tasks_blocked()
        assert call.socket.pending() == []
    assert converse_problems(call.report.history.for_request()) == []  # type: ignore[union-attr]


@pytest.mark.parametrize(("elapsed_s", "goodbye_at_s"), [(25.0, 5.0), (40.0, 0.0)])
async def test_maximum_call_duration_counts_from_the_call_s_start(
        autojump_clock: Any, elapsed_s: float, goodbye_at_s: float) -> None:
    """A reconnect's socket started the limit again, so a call that reconnected ran several
    times it (and outlived its session item). A resumed call gets what is left of it; one
    past it hears the goodbye at once."""
    llm = FakeLLM([words("A very long story " * 20, gap_s=1.0)])

    async def resumed(setup: Setup) -> CallPlan:
        use_case = plain_use_case()
        return CallPlan(call_sid=setup.call_sid, use_case=use_case,
                        system_prompt=use_case.prompt, model_id="test-model", generation=1,
                        started_at=time.time() - elapsed_s)

    async with open_test_call(llm, resolve=resumed,
                              services_changes={"max_call_duration_s": 30.0}) as call:
        if goodbye_at_s:
            call.say("tell me everything")
        while (frame := await call.frame())["type"] != "end":
            pass
        assert trio.current_time() == pytest.approx(goodbye_at_s, abs=0.5)
        assert frame["handoffData"] == '{"reasonCode": "max-duration"}'


async def test_draining_ends_live_calls_politely(autojump_clock: Any) -> None:
    llm = FakeLLM([words("Sure.")])
    async with open_test_call(llm) as call:
        call.say("hello")
        await call.reply()
        await trio.testing.wait_all_tasks_blocked()
        ending = call.services.end_calls
        assert ending.waiters == 1                  # the handler's wait, and no task of its own
        ending.set()
        text, _ = await call.reply()
        assert text == DRAINING
        assert (await call.frame())["type"] == "end"
        call.say("one more thing")                  # the goodbye is said once, nothing spins
        await trio.testing.wait_all_tasks_blocked()
        assert call.socket.pending() == []
        assert ending.waiters == 0
    assert ending.waiters == 0


async def test_a_peer_that_never_closes_after_end_is_closed_by_us(autojump_clock: Any) -> None:
    """Twilio closes the socket ~90 ms after our ``end``. A peer gone without a FIN (a dead
    NAT or proxy) never does: the call, its slot and its session used to stay until TCP gave
    up. Now we close it ourselves ``END_CLOSE_S`` after the end, and the call ends."""
    llm = FakeLLM([words("Sure.")])
    async with open_test_call(llm) as call:
        call.say("hello")
        await call.reply()
        call.services.end_calls.set()
        await call.reply()
        assert (await call.frame())["type"] == "end"
        ended_at = trio.current_time()
        await call.done.wait()                      # the test, as Twilio, never closes
        assert trio.current_time() - ended_at == pytest.approx(END_CLOSE_S)
        assert call.socket.closed_with == (1000, "session ended")
        assert call.report.ended_by == "end"
        assert call.report.flushed


async def test_a_call_set_up_while_the_server_drains_ends_at_once(autojump_clock: Any) -> None:
    ending = EndSignal()
    ending.set()
    async with open_test_call(FakeLLM([]), services_changes={"end_calls": ending}) as call:
        text, _ = await call.reply()
        assert text == DRAINING
        assert (await call.frame())["handoffData"] == '{"reasonCode": "server-draining"}'
        assert trio.current_time() == 0
    assert ending.waiters == 0


def flaky_registry() -> ToolRegistry:
    async def explode(ctx: Any, args: Any) -> dict[str, Any]:
        raise RuntimeError("database on fire")

    async def hang(ctx: Any, args: Any) -> dict[str, Any]:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    return ToolRegistry([ToolDefinition("explode", explode),
                         ToolDefinition("hang", hang, timeout_s=5.0)])


@pytest.mark.parametrize(("tool", "reason"), [("explode", "failed: RuntimeError"),
                                              ("hang", "timed out after 5 s")])
async def test_a_failing_or_hanging_tool_becomes_an_error_result(
        autojump_clock: Any, tool: str, reason: str) -> None:
    llm = FakeLLM([tool_use("tu_1", tool), words("Sorry, that did not work.")])
    use_case = plain_use_case(tools=[{"name": "explode", "description": "x"},
                                     {"name": "hang", "description": "y"}])
    async with open_test_call(llm, use_case=use_case, registry=flaky_registry()) as call:
        call.say("do it")
        text, _ = await call.reply()
        assert text == "Sorry, that did not work."
    result = call.history[3]["content"][0]["toolResult"]
    assert result["status"] == "error"
    assert result["content"][0]["text"].startswith(reason)


@pytest.mark.parametrize(("declared_s", "limit_s"), [(None, 5.0), (1.5, 1.5)])
async def test_a_hanging_tool_is_cut_at_its_own_limit_or_the_use_cases(
        autojump_clock: Any, declared_s: float | None, limit_s: float) -> None:
    """The tool's ``timeout_s``, unless the use case declares one for it; the model is asked
    again exactly that long (virtual time) after the tool was asked for."""
    llm = FakeLLM([tool_use("tu_1", "hang"), words("Sorry, that did not work.")])
    declaration: dict[str, Any] = {"name": "hang", "description": "y"}
    if declared_s is not None:
        declaration["timeout_s"] = declared_s
    use_case = plain_use_case(tools=[declaration])
    async with open_test_call(llm, use_case=use_case, registry=flaky_registry()) as call:
        call.say("do it")
        text, _ = await call.reply()
        assert text == "Sorry, that did not work."
    result = call.history[3]["content"][0]["toolResult"]
    assert result["content"][0]["text"].startswith(f"timed out after {limit_s:g} s")
    asked_at = llm.opened_at[0] + 0.1                   # tool_use pauses 0.1 s, then asks
    assert llm.opened_at[1] - asked_at == pytest.approx(limit_s, abs=1e-9)


async def test_a_tool_result_json_cannot_hold_is_made_plain_not_fatal(
        autojump_clock: Any) -> None:
    """A plugin returning a datetime, a Decimal, NaN, a set or a lone surrogate: the history
    used to keep them as they were, and the real Bedrock backend's serializer then raised
    TypeError in the next model round, ending the call (1011). Made JSON at the executor,
    with a warning for the plugin's author; failing the tool could make the model repeat a
    side effect."""
    import datetime
    from decimal import Decimal

    from voiceagent.llm.bedrock_converse import build_converse_request
    from voiceagent.llm.bedrock_signing import request_body

    async def quote(ctx: Any, args: Any) -> dict[str, Any]:
        return {"at": datetime.date(2026, 12, 5), "price": Decimal("9.50"),
                "rating": float("nan"), "tags": {"veg"}, "note": "caf\ud800e"}

    registry = ToolRegistry([ToolDefinition("quote", quote, side_effect=True)])
    llm = FakeLLM([tool_use("tu_1", "quote"), words("Nine fifty.")])
    use_case = plain_use_case(tools=[{"name": "quote", "description": "x"}])
    async with open_test_call(llm, use_case=use_case, registry=registry) as call:
        call.say("how much?")
        text, _ = await call.reply()
        assert text == "Nine fifty."
    result = call.history[3]["content"][0]["toolResult"]
    assert result["status"] == "success"
    assert result["content"][0]["json"] == {
        "at": "2026-12-05", "price": "9.50", "rating": None, "tags": "{'veg'}",
        "note": "caf\ufffde"}
    _, body = request_body(build_converse_request(llm.requests[-1]))   # the real serializer
    assert b'"price":"9.50"' in body
    assert call.report.ended_by == "hangup"


def test_history_is_trimmed_in_valid_pairs() -> None:
    history = History()
    history.add_assistant("Welcome.")
    for n in range(30):
        history.add_user_text(f"question {n}")
        history.add_assistant("Checking.", [{"toolUseId": f"t{n}", "name": "x", "input": {}}])
        history.add_tool_results([{"toolResult": {"toolUseId": f"t{n}",
                                                  "content": [{"json": {}}],
                                                  "status": "success"}}])
        history.add_assistant(f"Answer {n}.")
    sealed = history.take_sealed()
    dropped = history.trim(10)
    assert dropped > 0
    assert len(history) <= 10
    assert history.messages[0]["role"] == "user"
    assert converse_problems(history.messages) == []
    history.add_user_text("one more")
    later = history.take_sealed()
    assert later[0][0] == sealed[-1][0] + 1          # store keys keep counting


def test_services_change_helper_is_plain() -> None:
    from actors.call import CallServices
    services = CallServices(llm=FakeLLM([]), store=None, registry=ToolRegistry(),  # type: ignore[arg-type]
                            persist=lambda *a: None, flush=None)  # type: ignore[arg-type]
    assert replace(services, idle_reprompt_s=3.0).idle_reprompt_s == 3.0


async def test_only_junk_frames_close_the_call(autojump_clock: Any) -> None:
    llm = FakeLLM([words("Fine.")])
    async with open_test_call(llm) as call:
        for n in range(9):
            call.socket.push("{junk" if n % 2 else b"\x00")
        call.say("still fine?")                   # a good frame resets the count
        assert (await call.reply())[0] == "Fine."
        for _ in range(10):
            call.socket.push("{junk")
        with trio.fail_after(5):
            await call.done.wait()
    assert call.socket.closed_with == (1008, "too many unusable frames")
    assert call.report.ended_by == "bad-frames"


async def test_tokens_played_stand_in_for_an_interrupt_that_does_not_say(
        autojump_clock: Any) -> None:
    """tokensPlayed (the ``tokens-played`` subscription) is what the caller really heard: an
    interrupt without utteranceUntilInterrupt uses it. A new turn does not start it afresh
    (the reply before may still be playing, its new reply queued behind it): the record runs
    from the last interrupt, or from Twilio saying the agent stopped speaking, and is also
    offered from each turn start on (review s14)."""
    in_send, in_recv = trio.open_memory_channel[Inbound](math.inf)
    cmd_send, cmd_recv = trio.open_memory_channel[TurnCommand](math.inf)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(interrupt_handler.run, inbound=in_recv, commands=cmd_send))
        for message in (TokensPlayed("Welcome!"),
                        Prompt("hours?", received_at=trio.current_time()),
                        TokensPlayed("We open at nine,"), TokensPlayed(" and close"),
                        SpeakerEvent("caller", True), Interrupt(None, 900),
                        Prompt("and Sunday?", received_at=trio.current_time()),
                        TokensPlayed("Closed Sunday."),
                        Interrupt("Closed", 300),
                        TokensPlayed("Anything else?"), SpeakerEvent("agent", False),
                        Interrupt(None, 10)):
            in_send.send_nowait(message)
            await trio.sleep(0.5)
        in_send.close()
    commands = [command async for command in cmd_recv]
    said = [(type(c).__name__, getattr(c, "text", None) or getattr(c, "heard", None),
             getattr(c, "played", None)) for c in commands]
    assert said == [("UserSaid", "hours?", None),
                    ("BargeIn", None, ("Welcome! We open at nine, and close",
                                       "We open at nine, and close")),
                    ("UserSaid", "and Sunday?", None),
                    ("BargeIn", "Closed", ()),
                    ("BargeIn", None, ())]       # all of it had played: nothing to stand in
    assert [c.duration_ms for c in commands if isinstance(c, BargeIn)] == [900, 300, 10]


def test_the_tokens_played_record_stays_bounded_without_interrupts() -> None:
    """With no interrupt and no speaker events the record is never cleared: it keeps the
    last turns' (as many as the streamer may cut) and at most MAX_PLAYED_CHARS, the oldest
    turns' going first, so a long call's record still ends with what plays now."""
    played = Played()
    for turn in range(3 * MAX_PLAYED_TURNS):
        played.turn_started()
        played.add(f"reply {turn}.")
    options = played.heard()
    assert len(options) == MAX_PLAYED_TURNS
    assert options[-1] == f"reply {3 * MAX_PLAYED_TURNS - 1}."
    for _ in range(3):
        played.turn_started()
        for _ in range(MAX_PLAYED_CHARS // 100):
            played.add("x" * 99)
    assert sum(len(t) for t in played.heard()[:1]) <= MAX_PLAYED_CHARS
    assert played.heard()[-1].startswith("x")
