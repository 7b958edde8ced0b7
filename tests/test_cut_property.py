"""Random orders of prompts, cuts, barge-ins, re-prompts and a goodbye, between the streamer
and the real relay writer: the history keeps exactly the words that went out to Twilio.

The test plays the relay reader (``CutMarks.cut``, the moment it reads an interrupt) and the
interrupt handler (the commands, each ``BargeIn`` some time after its cut), so a goodbye or a
re-prompt can start between a cut and its barge-in, and a barge-in can arrive after the turn
it is about has recorded its words, which the whole-call tests leave to the scheduler. Twilio
never says what was heard here, so what was sent is what the caller heard; and the store,
written as the streamer hands it messages, holds the history.
"""

from __future__ import annotations

import re
from typing import Any

import trio
import trio.testing
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import actors.history as history_module
from actors import llm_streamer, relay_writer, tool_executor
from actors.context import CallContext
from actors.history import History
from actors.messages import (
    BargeIn,
    EndCall,
    Outgoing,
    Reprompt,
    Text,
    Timed,
    TurnCommand,
    UserSaid,
)
from actors.relay_writer import WriterStats
from tests.call_harness import plain_use_case
from tests.fakes import (
    FakeLLM,
    MemorySocket,
    MemoryStore,
    RecordingWriter,
    Step,
    WallClock,
    tool_use,
    words,
)
from tests.test_history_property import TOOLS, registry
from voiceagent.llm.base import LLMRequest
from voiceagent.llm.converse import converse_problems

steps = st.lists(st.one_of(
    st.tuples(st.just("say"), st.sampled_from(["hours?", "and Sunday?", "mhm", "order pizza"])),
    st.tuples(st.just("cut"), st.none()),
    st.tuples(st.just("barge"), st.none()),
    st.tuples(st.just("reprompt"), st.none()),
    st.tuples(st.just("end"), st.none()),
    st.tuples(st.just("wait"), st.sampled_from([0.0, 0.01, 0.05, 0.2, 1.0])),
    st.tuples(st.just("settle"), st.none()),
), max_size=16)


def _words(text: str) -> list[str]:
    return re.findall(r"\S+", text)


def _script(request: LLMRequest) -> list[Step]:
    """A reply, or a side-effect tool round ("order ...") and the words after its result."""
    last = request.messages[-1]["content"]
    if "toolResult" in last[0]:
        return words("All done, anything else?", gap_s=0.02)
    if "order" in " ".join(block.get("text", "") for block in last):
        return tool_use(f"tu_{len(request.messages)}", "placeOrder", before="Placing that now")
    return words("Sure. We open at nine and close at ten tonight.", gap_s=0.02)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(schedule=steps, hold=st.sampled_from([0.0, 0.2]),
       cut_at=st.sets(st.integers(min_value=1, max_value=30), max_size=3),
       cap=st.sampled_from([4, 200]))
@example(schedule=[("say", "hours?"), ("wait", 1.0), ("end", None), ("barge", None)],
         hold=0.2, cut_at={2}, cap=200)         # the defect of the eleventh pass
async def test_the_history_keeps_exactly_what_was_sent(
        schedule: list[tuple[str, Any]], hold: float, cut_at: set[int], cap: int,
        autojump_clock: Any, monkeypatch: Any) -> None:
    """``cut_at``: the reader also reads an interrupt as the writer takes the text frame of
    that number, after everything else has run (the turn may have recorded it) and before
    the writer checks it: the writer is slow to look, which the scheduler decides in a
    call."""
    socket, stats = MemorySocket(), WriterStats()
    out_send, out_recv = trio.open_memory_channel[Outgoing](0)
    checked_send, checked = trio.open_memory_channel[Outgoing](0)
    commands_send, commands = trio.open_memory_channel[TurnCommand](0)
    llm = FakeLLM(_script)
    use_case = plain_use_case(tools=TOOLS)
    pending = 0                                 # cuts whose barge-in is still to come
    monkeypatch.setattr(history_module, "time", WallClock)     # at_ms apart, as in a call
    writer = RecordingWriter()

    def stored(sealed: list[tuple[int, dict[str, Any], dict[str, Any]]]) -> None:
        for index, message, meta in sealed:
            writer.persist("CA1", index, message, meta)

    async def writer_slow_to_look() -> None:
        nonlocal pending
        taken = 0
        async with checked_send:
            async for outgoing in out_recv:
                frame = outgoing.frame if isinstance(outgoing, Timed) else outgoing
                if isinstance(frame, Text) and frame.token:
                    taken += 1
                    if taken in cut_at:
                        await trio.testing.wait_all_tasks_blocked()
                        ctx.marks.cut()
                        pending += 1
                await checked_send.send(outgoing)

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            env = tool_executor.ToolEnv(call_sid="CA1", use_case=use_case,
                                        registry=registry(), store=MemoryStore(),
                                        outbound=out_send.clone())
            ctx = CallContext(call_sid="CA1", use_case=use_case, model_id="test-model",
                              system_prompt=use_case.prompt, llm=llm, history=History(),
                              outbound=out_send,
                              tools=tool_executor.ToolExecutor(nursery, env),
                              token_hold_s=hold, max_history_messages=cap)
            nursery.start_soon(writer_slow_to_look)
            nursery.start_soon(lambda: relay_writer.run(socket=socket, outbound=checked,
                                                        stats=stats, marks=ctx.marks))
            nursery.start_soon(lambda: llm_streamer.run(commands=commands, ctx=ctx,
                                                        persist=stored))
            async with commands_send:
                for kind, value in schedule:
                    match kind:
                        case "say":
                            await commands_send.send(UserSaid(value,
                                                              received_at=trio.current_time()))
                        case "cut":
                            ctx.marks.cut()
                            pending += 1
                        case "barge" if pending:
                            pending -= 1
                            await commands_send.send(BargeIn(heard=None))
                        case "reprompt":
                            await commands_send.send(Reprompt("Are you still there?"))
                        case "end":
                            await commands_send.send(EndCall("Goodbye for now.", "draining"))
                        case "wait":
                            await trio.sleep(value)
                        case "settle":
                            await trio.testing.wait_all_tasks_blocked()
                for _ in range(2):      # each cut gets its barge-in, once every turn is done
                    await trio.sleep(5)
                    while pending:
                        pending -= 1
                        await commands_send.send(BargeIn(heard=None))
            nursery.cancel_scope.deadline = trio.current_time() + 5
    if len(ctx.history):
        assert converse_problems(ctx.history.for_request()) == []
    stored(ctx.history.take_sealed(final=True))       # as the call's teardown does
    entries = writer.stored()       # the messages trimmed from memory, then the history
    conversation = [entry["chat"] for entry in entries]
    assert [entry["seq"] for entry in entries] == list(range(len(entries)))
    assert conversation[len(conversation) - len(ctx.history):] == list(ctx.history.messages)
    sent = [f["token"] for f in socket.pending() if f.get("type") == "text"]
    said = [block["text"] for message in conversation if message["role"] == "assistant"
            for block in message["content"] if "text" in block]
    assert _words(" ".join(said)) == _words(" ".join(sent))
    assert llm.violations == []
