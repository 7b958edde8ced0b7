"""Random schedules of prompts, barge-ins, keys, tool calls and hang-ups always leave a history
that Bedrock's Converse API accepts, and every request the model saw was valid too."""

from __future__ import annotations

import itertools
from typing import Any

import trio
import trio.testing
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import actors.history as history_module
from actors.call import CallPlan
from actors.history import History
from tests.call_harness import CALL_SID, open_test_call, plain_use_case
from tests.fakes import FakeLLM, RecordingWriter, Step, WallClock, tool_use, words
from voiceagent.errors import ModelStreamFailed
from voiceagent.llm.base import LLMRequest, TextDelta
from voiceagent.llm.converse import converse_problems
from voiceagent.tools.base import ToolDefinition
from voiceagent.tools.registry import ToolRegistry

TOOLS = [{"name": "placeOrder", "description": "Place an order"},
         {"name": "lookup", "description": "Look something up"}]


def registry() -> ToolRegistry:
    async def slow(ctx: Any, args: Any) -> dict[str, Any]:
        await trio.sleep(0.7)
        return {"done": True}

    return ToolRegistry([ToolDefinition("placeOrder", slow, side_effect=True),
                         ToolDefinition("lookup", slow)])


_TOOL_IDS = itertools.count()


def script(request: LLMRequest) -> list[Step]:
    last = request.messages[-1]["content"]
    if "toolResult" in last[0]:
        return words("All done, anything else?", gap_s=0.05)
    said = " ".join(b.get("text", "") for b in last)
    # unique for the whole run, as Bedrock's are: the message count repeats once the
    # history is trimmed, and a repeated toolUse id is a history Bedrock refuses
    n = next(_TOOL_IDS)
    if "order" in said:
        return tool_use(f"tu_{n}", "placeOrder", before="Placing that")
    if "both" in said:
        steps = tool_use(f"tu_{n}a", "lookup")
        return [*steps[:-1], *tool_use(f"tu_{n}b", "placeOrder")[1:]]
    if "fail" in said:
        return [0.1, TextDelta("Well"), ModelStreamFailed("modelStreamErrorException", "x")]
    return words("Sure thing, we have that " * (3 if "long" in said else 1), gap_s=0.1)


actions = st.lists(st.one_of(
    st.tuples(st.just("say"), st.sampled_from(["hi", "order pizza", "both please", "long one",
                                               "fail now", "   "])),
    # heard: any text, or the start of something the agent says (which may fit a turn
    # before the newest: a reply still playing when a prompt started the next)
    st.tuples(st.just("interrupt"), st.one_of(st.none(), st.text(max_size=20), st.sampled_from(
        ["Sure", "Sure thing, we", "Placing", "Placing that", "All done", "Well", "Five it"]))),
    st.tuples(st.just("dtmf"), st.sampled_from(list("0123456789#*"))),
    st.tuples(st.just("wait"), st.sampled_from([0.0, 0.05, 0.3, 1.0, 3.0])),
), max_size=14)


def check_call(call: Any, llm: FakeLLM) -> None:
    """Every request the model saw was valid and is what was sent; the history is valid;
    the store, the last write winning per key, holds it as it is (the messages trimmed from
    memory, if any, before it), one message per position, and a reconnect could resume
    all of it."""
    history = call.report.history
    assert history is not None
    assert llm.violations == []
    assert [list(r.messages) for r in llm.requests] == llm.sent_messages
    if len(history):
        assert converse_problems(history.for_request()) == []
    entries = call.writer.stored()
    stored = [entry["chat"] for entry in entries]
    assert stored[len(stored) - len(history):] == list(history.messages)
    assert [entry["seq"] for entry in entries] == list(range(len(entries)))
    if entries:
        metas = [{**entry["meta"], "at_ms": entry["at_ms"]} for entry in entries]
        assert converse_problems(History.resumed(stored, metas).for_request()) == []


async def play(call: Any, schedule: list[tuple[str, Any]]) -> None:
    """Twilio's side of a schedule, each step left to settle before the next."""
    for kind, value in schedule:
        match kind:
            case "say":
                call.say(value)
            case "interrupt":
                call.interrupt(value)
            case "dtmf":
                call.dtmf(value)
            case "wait":
                await trio.sleep(value)
        await trio.testing.wait_all_tasks_blocked()


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(schedule=actions)
async def test_any_schedule_leaves_a_valid_history(schedule: list[tuple[str, Any]],
                                                    autojump_clock: Any,
                                                    monkeypatch: Any) -> None:
    llm = FakeLLM(script)
    use_case = plain_use_case(tools=TOOLS, dtmf={"handlers": {"5": {"reply": "Five it is."}},
                                                 "idle_timeout_s": 0.5})
    monkeypatch.setattr(history_module, "time", WallClock)  # at_ms apart, as in a call
    async with open_test_call(llm, use_case=use_case, registry=registry()) as call:
        await play(call, schedule)
    check_call(call, llm)
    frames = call.socket.raw_sent
    assert all(frame.startswith("{") for frame in frames)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(schedule=actions, split=st.integers(min_value=0, max_value=14),
       resumed_with=actions)
async def test_a_call_resumed_anywhere_goes_on_with_a_valid_history(
        schedule: list[tuple[str, Any]], split: int, resumed_with: list[tuple[str, Any]],
        autojump_clock: Any, monkeypatch: Any) -> None:
    """The relay session fails at a random point of a random call (the socket drops, as the
    caller hanging up looks to us) and Twilio reconnects: the second socket resumes from what
    the store holds. Every request the model sees stays valid, and the store, each message
    under its own key, ends up holding exactly the conversation."""
    llm = FakeLLM(script)
    use_case = plain_use_case(tools=TOOLS, dtmf={"handlers": {"5": {"reply": "Five it is."}},
                                                 "idle_timeout_s": 0.5})
    monkeypatch.setattr(history_module, "time", WallClock)  # at_ms apart, as in a call
    async with open_test_call(llm, use_case=use_case, registry=registry()) as first:
        await play(first, schedule[:split])
    entries = first.writer.stored()                 # as saved_history.saved_history reads them
    plan = CallPlan(call_sid=CALL_SID, use_case=use_case, system_prompt=use_case.prompt,
                    model_id="test-model", greeting=None,
                    history=tuple(entry["chat"] for entry in entries),
                    history_meta=tuple({**entry["meta"], "at_ms": entry["at_ms"]}
                                       for entry in entries))

    async def resume(setup: Any) -> CallPlan:
        await trio.lowlevel.checkpoint()
        return plan

    async with open_test_call(llm, use_case=use_case, registry=registry(),
                              resolve=resume) as second:
        await play(second, [*resumed_with, ("say", "hi"), ("wait", 3.0)])
    assert llm.violations == []
    assert [list(r.messages) for r in llm.requests] == llm.sent_messages
    history = second.report.history
    assert history is not None
    assert converse_problems(history.for_request()) == []
    both = RecordingWriter(persisted=[*first.writer.persisted, *second.writer.persisted])
    assert [entry["chat"] for entry in both.stored()] == list(history.messages)


lively = st.lists(st.one_of(
    st.tuples(st.just("say"), st.sampled_from(["hi", "order pizza", "both please", "long one",
                                               "fail now"])),
    st.tuples(st.just("interrupt"), st.one_of(st.none(), st.sampled_from(
        ["", "Sure", "Sure thing, we", "Placing", "Placing that", "All done", "Well",
         "Are you", "I'm sorry", "xyz"]))),
    st.tuples(st.just("dtmf"), st.sampled_from(list("05#"))),
    st.tuples(st.just("wait"), st.sampled_from([0.0, 0.05, 0.3, 0.5, 1.0, 3.0, 6.0])),
    st.tuples(st.just("agent"), st.sampled_from(["on", "off"])),
    st.tuples(st.just("drain"), st.none()),
), max_size=20)


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(schedule=lively, hold=st.sampled_from([0.0, 0.2]), cap=st.sampled_from([4, 200]))
@example(schedule=[("say", "order pizza"), ("wait", 0.5), ("say", "hi"),
                   ("interrupt", "Placing")], hold=0.0, cap=200)     # found by a longer run
@example(schedule=[("dtmf", "5"), ("wait", 0.3), ("say", "hi"), ("say", "hi"),
                   ("interrupt", "Five it"), ("interrupt", "")], hold=0.0, cap=4)  # and another
@example(schedule=[("say", "order pizza"), ("wait", 3.0), ("say", "hi"), ("say", "hi"),
                   ("wait", 1.0), ("interrupt", "Placing"), ("say", "hi"), ("wait", 3.0)],
         hold=0.0, cap=200)     # a stored reply that the cut drops (twelfth pass)
async def test_reprompts_goodbyes_speaker_events_and_caps_keep_history_and_store_in_step(
        schedule: list[tuple[str, Any]], hold: float, cap: int, autojump_clock: Any,
        monkeypatch: Any) -> None:
    """The same, with what moves turns from outside the caller's words: silence re-prompts,
    a draining server's goodbye (and the socket we close after `end`), speaker events, held
    tokens, a small history cap; heard words are drawn from what the agent says, so a cut
    may land on a turn before the newest. The store, last write winning per key, always
    holds the history as it is (a cut into a stored message used to be missed)."""
    llm = FakeLLM(script)
    use_case = plain_use_case(tools=TOOLS, dtmf={"handlers": {"5": {"reply": "Five it is."}},
                                                 "idle_timeout_s": 0.5})
    monkeypatch.setattr(history_module, "time", WallClock)  # at_ms apart, as in a call
    changes = {"idle_reprompt_s": 2.0, "max_reprompts": 5, "token_hold_s": hold,
               "max_history_messages": cap}
    async with open_test_call(llm, use_case=use_case, registry=registry(),
                              services_changes=changes) as call:
        for kind, value in schedule:
            if kind == "drain":
                call.services.end_calls.set()
            elif call.socket.closed_with is None:   # closed after `end`: nothing comes
                if kind == "agent":
                    call.socket.push({"type": "info", "name": "agentSpeaking", "value": value})
                else:
                    await play(call, [(kind, value)])
            await trio.testing.wait_all_tasks_blocked()
    check_call(call, llm)
