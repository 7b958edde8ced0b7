"""Actors one at a time, through their own channels, on the virtual clock: the promises the
whole-call tests cannot isolate (a rule that holds only because another actor happens not to
break it is not tested by a whole call)."""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing

from actors import relay_writer, tool_executor
from actors.messages import (
    End,
    Outbound,
    Outgoing,
    Text,
    Timed,
    ToolBatch,
    ToolCall,
    ToolOutcome,
)
from actors.relay_writer import WriterStats
from actors.turn_slot import CutMarks
from tests.call_harness import plain_use_case
from tests.fakes import MemorySocket, MemoryStore
from voiceagent.relay.outbound import Play
from voiceagent.tools.base import ToolDefinition
from voiceagent.tools.registry import ToolRegistry

ORDER_TOOL = [{"name": "placeOrder", "description": "Place an order"}]


async def test_the_writer_sends_nothing_after_end(autojump_clock: Any) -> None:
    """Whoever still sends after ``end`` (a turn, a tool, a reprompt), nothing reaches the
    socket: Twilio would treat it as a protocol error on a session it is handing over."""
    socket, stats = MemorySocket(), WriterStats()
    send, receive = trio.open_memory_channel[Outbound](math.inf)
    for message in (Text("Goodbye"), End('{"reasonCode": "end-call"}'), Text("late"),
                    Text("", last=True), End("{}")):
        send.send_nowait(message)
    send.close()
    with trio.fail_after(10):
        await relay_writer.run(socket=socket, outbound=receive, stats=stats)
    assert socket.pending() == [
        {"type": "text", "token": "Goodbye", "last": False},
        {"type": "text", "token": "", "last": True},        # end closes the open cycle first
        {"type": "end", "handoffData": '{"reasonCode": "end-call"}'}]
    assert stats.dropped_after_end == 3


async def test_the_writer_tells_of_an_end_it_took_even_when_the_peer_is_gone(
        autojump_clock: Any) -> None:
    """The agent's ``end`` counts from the moment the writer takes it: a socket broken under
    its send leaves Twilio reporting a failed session, and resuming that would reopen a
    conversation the agent had closed (the call marks its relay ended on this)."""
    socket, stats = MemorySocket(), WriterStats()
    send, receive = trio.open_memory_channel[Outbound](math.inf)
    taken: list[End] = []
    socket.hang_up()
    send.send_nowait(End('{"reasonCode": "live-agent-handoff"}'))
    send.close()
    with trio.fail_after(10):
        await relay_writer.run(socket=socket, outbound=receive, stats=stats,
                               on_end_taken=taken.append)
    assert [end.handoff_data for end in taken] == ['{"reasonCode": "live-agent-handoff"}']
    assert not stats.ended                                  # never on the socket


async def test_the_writer_withholds_the_words_of_a_cut_turn(autojump_clock: Any) -> None:
    socket, stats, marks = MemorySocket(), WriterStats(), CutMarks()
    send, receive = trio.open_memory_channel[Outbound](math.inf)
    marks.turn_started()
    send.send_nowait(Text("We open"))
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: relay_writer.run(socket=socket, outbound=receive,
                                                        stats=stats, marks=marks))
            await trio.testing.wait_all_tasks_blocked()
            marks.cut()                                     # the reader read an interrupt
            send.send_nowait(Text(" at nine"))
            send.send_nowait(Text(" and", last=True))       # the closer keeps, without words
            await trio.testing.wait_all_tasks_blocked()
            assert marks.withheld == " at nine and"
            marks.turn_started()                            # the next turn speaks freely
            await trio.testing.wait_all_tasks_blocked()
            send.send_nowait(Text("Sure."))
            send.close()
    assert [(f["token"], f["last"]) for f in socket.pending()] == [
        ("We open", False), ("", True), ("Sure.", False)]
    assert marks.withheld == ""                             # reset by the new turn
    assert stats.dropped_after_cut == 2


async def test_a_side_effect_tool_runs_once_per_tool_use_id(autojump_clock: Any) -> None:
    """The same toolUseId asked twice (a retried model round, a duplicate in one reply):
    the order is placed once, and both askers get its one outcome."""
    runs: list[str] = []

    async def place(ctx: Any, args: Any) -> dict[str, Any]:
        runs.append(ctx.tool_use_id)
        await trio.sleep(1.0)
        return {"status": "placed", "order": len(runs)}

    env, _outbound = _order_env(place)
    outcomes: list[ToolOutcome] = []
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            with tool_executor.ToolExecutor(nursery, env) as executor:
                for when in ("concurrently", "concurrently", "after it finished"):
                    if when == "after it finished":
                        await trio.sleep(5.0)
                    results_send, results = trio.open_memory_channel[ToolOutcome](1)
                    executor.submit(ToolBatch((ToolCall("tu_1", "placeOrder", {}),),
                                              results_send))
                    nursery.start_soon(_collect, results, outcomes)
    assert runs == ["tu_1"]
    assert [o.status for o in outcomes] == ["success"] * 3
    assert {o.content["order"] for o in outcomes if isinstance(o.content, dict)} == {1}


async def test_the_executor_lets_the_writer_end_only_after_its_last_batch(
        autojump_clock: Any) -> None:
    """The executor has no task of its own: a batch runs as a task of the nursery it was
    given, with its own share of the outbound channel. Closing the executor (the streamer
    ending) refuses further batches, and the outbound channel ends when the last running
    batch is done, not before: a side-effect tool still running can speak, and the writer's
    end cascade waits for it."""
    async def announce(ctx: Any, args: Any) -> dict[str, Any]:
        await trio.sleep(2.0)
        await ctx.send(Play("https://example.com/chime.mp3"))
        return {"status": "placed"}

    env, outbound = _order_env(announce)
    socket = MemorySocket()
    ended_at: list[float] = []

    async def writer() -> None:
        await relay_writer.run(socket=socket, outbound=outbound, stats=WriterStats())
        ended_at.append(trio.current_time())

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            results_send, results = trio.open_memory_channel[ToolOutcome](1)
            with tool_executor.ToolExecutor(nursery, env) as executor:
                executor.submit(ToolBatch((ToolCall("tu_1", "placeOrder", {}),),
                                          results_send))
            with pytest.raises(trio.ClosedResourceError, match="call is ending"):
                executor.submit(ToolBatch((ToolCall("tu_2", "placeOrder", {}),),
                                          results_send))
            outcome = await results.receive()
    assert outcome.status == "success"
    assert [f["source"] for f in socket.pending() if f["type"] == "play"] == [
        "https://example.com/chime.mp3"]
    assert ended_at == [pytest.approx(2.0)]


async def test_a_side_effect_outcome_served_again_did_not_speak_again(
        autojump_clock: Any) -> None:
    """The same toolUseId asked in a later round gets the outcome it had, not its ``spoke``:
    nothing was played this time, and a model that then says nothing leaves silence unless
    NO_WORDS fills it (helper-31)."""
    async def place(ctx: Any, args: Any) -> dict[str, Any]:
        await ctx.send(Play("https://example.com/chime.mp3"))
        return {"status": "placed"}

    env, outbound = _order_env(place)
    socket = MemorySocket()
    spoke: list[bool] = []
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(relay_writer.run, socket=socket, outbound=outbound,
                                       stats=WriterStats()))
            with tool_executor.ToolExecutor(nursery, env) as executor:
                for _ in range(2):
                    results_send, results = trio.open_memory_channel[ToolOutcome](1)
                    executor.submit(ToolBatch((ToolCall("tu_1", "placeOrder", {}),),
                                              results_send))
                    spoke.append((await results.receive()).spoke)
    assert spoke == [True, False]
    assert [f["source"] for f in socket.pending() if f["type"] == "play"] == [
        "https://example.com/chime.mp3"]


@pytest.mark.parametrize(("chars", "status"), [(30_000, "success"), (40_000, "error")])
async def test_a_tool_result_over_the_limit_reaches_neither_the_model_nor_the_store(
        autojump_clock: Any, chars: int, status: str) -> None:
    """A result goes to the model on every later request, and one round's results are one
    stored item (DynamoDB: 400 KB); a 420 KB menu was dropped by the store, and the call's
    next reconnect found its history broken and started afresh (helper-25). The model is
    told what happened instead, and that the order tool did run."""
    async def place(ctx: Any, args: Any) -> dict[str, Any]:
        return {"menu": "pizza " * (chars // 6)}

    env, _outbound = _order_env(place)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            with tool_executor.ToolExecutor(nursery, env) as executor:
                results_send, results = trio.open_memory_channel[ToolOutcome](1)
                executor.submit(ToolBatch((ToolCall("tu_1", "placeOrder", {}),),
                                          results_send))
                outcome = await results.receive()
    assert outcome.status == status
    if status == "error":
        assert outcome.content == (
            f"its result was {chars // 6 * 6 + 11} bytes, over the "
            f"{tool_executor.MAX_RESULT_BYTES}-byte limit, so it was dropped. The tool did "
            "run: check before repeating it.")


async def test_one_reply_s_tool_results_stay_one_item_the_store_keeps(
        autojump_clock: Any) -> None:
    """Each result within its cap, but 13 of them in one reply made a 413 KB results
    message, one chat item both stores refuse (helper-28): past MAX_CALLS_PER_ROUND the
    calls are answered, not run, and the round's results, with the most caller words a
    user message keeps, fit."""
    from actors.unanswered_words import MAX_UNANSWERED_CHARS
    from voiceagent.store import records
    from voiceagent.store.base import check_item_size

    ran: list[str] = []

    async def place(ctx: Any, args: Any) -> dict[str, Any]:
        ran.append(ctx.tool_use_id)
        return {"page": "x" * (tool_executor.MAX_RESULT_BYTES - 20)}

    env, _outbound = _order_env(place)
    calls = tuple(ToolCall(f"tu_{n:02d}", "placeOrder", {}) for n in range(13))
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            with tool_executor.ToolExecutor(nursery, env) as executor:
                results_send, results = trio.open_memory_channel[ToolOutcome](len(calls))
                executor.submit(ToolBatch(calls, results_send))
                outcomes = [await results.receive() for _ in calls]
    assert sorted(ran) == [f"tu_{n:02d}" for n in range(tool_executor.MAX_CALLS_PER_ROUND)]
    assert sorted(o.tool_use_id for o in outcomes
                  if o.content == tool_executor.TOO_MANY_CALLS) == [
        f"tu_{n:02d}" for n in range(tool_executor.MAX_CALLS_PER_ROUND, 13)]
    message = {"role": "user", "content": [
        *(o.to_block() for o in outcomes), {"text": "é" * MAX_UNANSWERED_CHARS}]}
    check_item_size(records.chat_item("CA1", 1_700_000_000_000, 3, message,
                                      {"at_ms": 1_700_000_000_000, "turn": 9}, 3600))


def _order_env(place: Any) -> tuple[tool_executor.ToolEnv,
                                     trio.MemoryReceiveChannel[Outgoing]]:
    """A call whose one tool, ``placeOrder``, is ``place`` with side effects."""
    registry = ToolRegistry([ToolDefinition("placeOrder", place, side_effect=True)])
    outbound_send, outbound = trio.open_memory_channel[Outgoing](math.inf)
    env = tool_executor.ToolEnv(call_sid="CA1", use_case=plain_use_case(tools=ORDER_TOOL),
                                registry=registry, store=MemoryStore(),
                                outbound=outbound_send)
    return env, outbound


async def _collect(results: trio.MemoryReceiveChannel[ToolOutcome],
                   into: list[ToolOutcome]) -> None:
    into.append(await results.receive())


# ---------------------------------------------------------------- relay_reader

async def test_the_reader_types_frames_stamps_arrivals_and_marks_a_cut(
        autojump_clock: Any) -> None:
    """Frames in, typed messages out in order; final prompts and keys carry their arrival
    time; an interrupt marks the cut before it is passed on; junk is counted, not passed;
    the peer closing ends the reader and closes its channel."""
    from actors import relay_reader
    from actors.messages import Dtmf, Inbound, Interrupt, Prompt
    from actors.relay_reader import FrameStats

    socket, stats, marks = MemorySocket(), FrameStats(), CutMarks()
    marks.turn_started()
    send, receive = trio.open_memory_channel[Inbound](math.inf)
    await trio.sleep(1.5)
    for frame in ({"type": "prompt", "voicePrompt": "hel", "lang": "en-US", "last": False},
                  {"type": "prompt", "voicePrompt": "hello", "lang": "en-US", "last": True},
                  "{broken", {"type": "somethingNew"}, {"type": "dtmf", "digit": "5"},
                  {"type": "interrupt", "utteranceUntilInterrupt": "We",
                   "durationUntilInterruptMs": 300}):
        socket.push(frame)
    socket.hang_up()
    with trio.fail_after(10):
        await relay_reader.run(socket=socket, inbound=send, stats=stats, max_frame_bytes=65536,
                               marks=marks)
    messages = [message async for message in receive]
    assert [type(m) for m in messages] == [Prompt, Prompt, Dtmf, Interrupt]
    partial, final, key, interrupt = messages
    assert isinstance(partial, Prompt)
    assert partial.received_at is None
    assert isinstance(final, Prompt)
    assert final.received_at == 1.5
    assert isinstance(key, Dtmf)
    assert key.received_at == 1.5
    assert isinstance(interrupt, Interrupt)
    assert interrupt.heard == "We"
    assert marks.speaking_cut
    assert dict(stats.rejected) == {"bad_json": 1, "unknown_type": 1}
    assert stats.received == 6


# ---------------------------------------------------------------- speaker

async def test_the_speaker_streams_the_first_clause_and_holds_the_rest(
        autojump_clock: Any) -> None:
    """Token by token until the first clause ends; then held and sent together at a clause
    end or when the hold expires; ``segment`` is exactly what was handed over, and a close
    drops held text without sending it."""
    from actors.speaker import Speaker

    send, receive = trio.open_memory_channel[Outbound](math.inf)
    speaker = Speaker(send, hold_s=0.1)
    for token in ("Sure", ",", " we", " have"):
        await speaker.say(token)
    assert [m.token for m in _texts(receive)] == ["Sure", ","]    # " we have" is held
    assert speaker.flush_at == trio.current_time() + 0.1
    await speaker.say(" pizza.")                            # a clause end sends what is held
    assert [m.token for m in _texts(receive)] == [" we have pizza."]
    await speaker.say(" And")
    await trio.sleep(0.1)
    await speaker.say(" more")                              # the window has passed
    assert [m.token for m in _texts(receive)] == [" And more"]
    await speaker.say(" never sent")
    await speaker.close()
    assert [(m.token, m.last) for m in _texts(receive)] == [("", True)]
    assert speaker.segment == "Sure, we have pizza. And more"


def _texts(receive: trio.MemoryReceiveChannel[Outbound]) -> list[Text]:
    out = []
    while True:
        try:
            message = receive.receive_nowait()
        except trio.WouldBlock:
            return out
        if isinstance(message, Timed):          # the first word: the writer reports its send
            message = message.frame
        assert isinstance(message, Text)
        out.append(message)


async def test_the_reader_cancels_the_speaking_turn_before_anyone_else_runs(
        autojump_clock: Any) -> None:
    """Interrupt -> upstream closed is the reader's read plus one scheduler pass: the turn's
    scope is cancelled when the reader reads the interrupt, not after the interrupt handler
    and the streamer have passed it on (nobody reads ``inbound`` here)."""
    from actors import relay_reader
    from actors.messages import Inbound, Interrupt
    from actors.relay_reader import FrameStats
    from actors.turn_slot import TurnSlot

    socket, marks = MemorySocket(), CutMarks()
    send, receive = trio.open_memory_channel[Inbound](math.inf)
    outcome: list[str] = []

    async def speaking() -> None:
        try:
            await trio.sleep(60)
            outcome.append("finished")
        except trio.Cancelled:
            outcome.append("cancelled")
            raise

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            slot = TurnSlot(nursery, marks)
            await slot.restart(speaking)
            await trio.testing.wait_all_tasks_blocked()
            socket.push({"type": "interrupt", "utteranceUntilInterrupt": "We",
                         "durationUntilInterruptMs": 300})
            socket.hang_up()
            started = trio.current_time()
            await relay_reader.run(socket=socket, inbound=send, stats=FrameStats(),
                                   max_frame_bytes=65536, marks=marks)
            await trio.testing.wait_all_tasks_blocked()
            assert outcome == ["cancelled"]
            assert not slot.busy
            await slot.cancel_and_wait(reason="barge-in")      # the streamer's, later: no-op
            assert trio.current_time() == started               # no time passed
    assert [type(m) async for m in receive] == [Interrupt]      # passed on, never read


async def test_a_finished_turn_leaves_nothing_behind_in_the_slot(autojump_clock: Any) -> None:
    """A call spends most of its life between turns; at thousands of calls, each keeping its
    last turn's cancel scope and event costs megabytes. Once a turn is done (finished or cut
    off), neither the slot nor the cut marks refer to them, so reference counting frees them
    with the collector off; a cut after that is harmless, and the next turn starts freely."""
    import gc
    import weakref

    from actors.turn_slot import TurnSlot

    marks, ran = CutMarks(), []

    async def speaking() -> None:
        await trio.sleep(1)
        ran.append("spoke")

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            slot = TurnSlot(nursery, marks)
            gc.disable()
            try:
                for turn in range(2):
                    await slot.restart(speaking)
                    held = [weakref.ref(slot._scope), weakref.ref(slot._done)]  # type: ignore[arg-type]
                    assert slot.busy
                    if turn == 1:
                        marks.cut()                    # the caller cuts the second one off
                    await trio.testing.wait_all_tasks_blocked()
                    await trio.sleep(2)
                    assert not slot.busy
                    assert [ref() for ref in held] == [None, None]
            finally:
                gc.enable()
            marks.cut()                                # nothing left to cancel: harmless
            await slot.restart(speaking)
            assert slot.busy
    assert ran == ["spoke", "spoke"]


def test_cuts_past_the_pending_limit_drop_the_oldest() -> None:
    """The pending cuts are a plain list (an empty deque is 760 bytes in every call): past
    MAX_PENDING_CUTS the oldest go, as the bounded deque dropped them, and each barge-in
    still takes the oldest kept first; with none pending it cuts the newest turn."""
    from actors.turn_slot import MAX_PENDING_CUTS
    marks = CutMarks()
    for _ in range(MAX_PENDING_CUTS + 2):
        marks.turn_started()
        marks.cut()
    assert [marks.take_cut() for _ in range(MAX_PENDING_CUTS)] == list(
        range(3, MAX_PENDING_CUTS + 3))
    assert marks.take_cut() == marks.turn == MAX_PENDING_CUTS + 2
