"""A blocking tool's audio sent as its call ends. The model is told whether a tool spoke
(``ToolOutcome.spoke``): a wrong False makes it say again what the caller heard. The outcome
read what the writer had taken so far, but a blocking tool's ``ctx.send`` runs as a trio task
of its own (``trio.from_thread.run``), outside the tool's cancel scope: its timeout (or the
turn abandoning it) fixed the outcome at once, and a ``play`` in flight (handed to the writer
in the same scheduler pass, or queued behind a busy writer) went out after it, recorded as
unheard. An async tool cannot lose this race: its send waits for the writer's answer in the
tool's own scope, and the writer answers a pass before the tool can see its cancellation.
Now a frame the writer takes after its call's outcome is withheld, and the tool is told so.
Found by review (s18)."""

from __future__ import annotations

import math
import threading
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing

from actors import relay_writer, tool_executor
from actors.messages import Outgoing, Text, ToolBatch, ToolCall, ToolOutcome
from actors.relay_writer import WriterStats
from tests.call_harness import plain_use_case
from tests.fakes import MemorySocket, MemoryStore, SlowAtTheWordSocket
from voiceagent.relay.outbound import End, Play
from voiceagent.tools.base import ToolContext, ToolDefinition
from voiceagent.tools.registry import ToolRegistry

HOLD = "https://example.com/hold.mp3"
LIMIT_S = 1.0
TOOLS = [{"name": "holdMusic", "description": "Play hold music while looking up."},
         {"name": "lookUp", "description": "Look the order up."}]


def _env(hold_music: Any) -> tuple[tool_executor.ToolEnv, trio.MemoryReceiveChannel[Outgoing]]:
    async def look_up(ctx: Any, args: Any) -> dict[str, Any]:
        await trio.sleep(3 * LIMIT_S)       # runs on past the other: the batch stays open
        return {"found": True}

    registry = ToolRegistry([
        ToolDefinition("holdMusic", hold_music, blocking=True, timeout_s=LIMIT_S),
        ToolDefinition("lookUp", look_up, side_effect=True)])
    outbound_send, outbound = trio.open_memory_channel[Outgoing](0)    # as the call's
    return tool_executor.ToolEnv(call_sid="CA1", use_case=plain_use_case(tools=TOOLS),
                                 registry=registry, store=MemoryStore(),
                                 outbound=outbound_send), outbound


def _agrees(outcome: ToolOutcome, told: list[bool], socket: MemorySocket) -> None:
    played = [f["source"] for f in socket.pending() if f["type"] == "play"]
    assert outcome.status == "error"
    assert (played == [HOLD], told) == (outcome.spoke, [outcome.spoke]), (played, told, outcome)


@pytest.mark.timeout(20)        # virtual time below; this bounds the real waits (a thread)
async def test_a_play_handed_over_in_the_pass_its_tool_times_out(
        mock_clock: trio.testing.MockClock) -> None:
    """The thread's send reaches the writer in the scheduler pass the tool's limit expires:
    the tool's task is cancelled and its outcome made in that pass, the writer takes the
    frame in the next."""
    waiting, answered = trio.Event(), trio.Event()
    told: list[bool] = []

    async def play_at_the_limit(ctx: ToolContext) -> bool:
        waiting.set()
        await trio.sleep(LIMIT_S)           # the thread's work ends as its limit does
        return await ctx.send(Play(HOLD))

    def hold_music(ctx: ToolContext, args: Any) -> dict[str, Any]:
        told.append(trio.from_thread.run(play_at_the_limit, ctx))
        trio.from_thread.run_sync(answered.set)
        return {"playing": told[-1]}

    env, outbound = _env(hold_music)
    socket = MemorySocket()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(relay_writer.run, socket=socket, outbound=outbound,
                                   stats=WriterStats()))
        results_send, results = trio.open_memory_channel[ToolOutcome](1)
        with tool_executor.ToolExecutor(nursery, env) as executor:
            executor.submit(ToolBatch((ToolCall("tu_hold", "holdMusic", {}),), results_send))
        await waiting.wait()
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(LIMIT_S)            # the send's sleep and the tool's limit expire
        outcome = await results.receive()
        await answered.wait()
    _agrees(outcome, told, socket)


@pytest.mark.parametrize("ended_by", ["its timeout", "the turn abandoning it"])
@pytest.mark.timeout(20)
async def test_a_play_queued_behind_a_busy_writer_as_its_tool_call_ends(
        mock_clock: trio.testing.MockClock, ended_by: str) -> None:
    """The agent's words go out to a slow Twilio; the tool's hold music waits behind them,
    and its call ends meanwhile. The other tool of the reply (a side effect, which runs on)
    keeps the batch's share of the channel open, so the writer gets to the frame later."""
    queued, answered = trio.Event(), trio.Event()
    told: list[bool] = []

    async def queue_play(ctx: ToolContext) -> bool:
        queued.set()                        # then, in this same step, waits in the channel
        return await ctx.send(Play(HOLD))

    def hold_music(ctx: ToolContext, args: Any) -> dict[str, Any]:
        told.append(trio.from_thread.run(queue_play, ctx))
        trio.from_thread.run_sync(answered.set)
        return {"playing": told[-1]}

    env, outbound = _env(hold_music)
    socket = SlowAtTheWordSocket("moment", delay_s=2 * LIMIT_S)
    outcomes: list[ToolOutcome] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(relay_writer.run, socket=socket, outbound=outbound,
                                   stats=WriterStats()))
        await env.outbound.send(Text("One moment", last=True))     # the writer is busy
        results_send, results = trio.open_memory_channel[ToolOutcome](2)
        with tool_executor.ToolExecutor(nursery, env) as executor:
            batch = ToolBatch((ToolCall("tu_hold", "holdMusic", {}),
                               ToolCall("tu_look", "lookUp", {})), results_send)
            executor.submit(batch)
        await queued.wait()
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.autojump_threshold = 0   # from here on, virtual time runs as it waits
        with trio.fail_after(60):
            if ended_by == "the turn abandoning it":
                batch.abandoned.set()
            for _ in range(2):
                outcomes.append(await results.receive())
        mock_clock.autojump_threshold = math.inf    # the thread's last step takes real time
        await answered.wait()
    hold = next(o for o in outcomes if o.name == "holdMusic")
    assert [o.status for o in outcomes if o.name == "lookUp"] == ["success"]
    assert (hold.content == tool_executor.CANCELLED) == (ended_by == "the turn abandoning it")
    _agrees(hold, told, socket)


@pytest.mark.timeout(20)
async def test_an_end_the_thread_sends_after_its_tool_timed_out_is_withheld(
        mock_clock: trio.testing.MockClock) -> None:
    """The thread of a blocking tool runs on after its timeout (threads cannot be
    cancelled); the model has been told the tool failed and talks on with the caller. An
    ``end`` the thread sends then would hang up on them: it is withheld, and ``send`` says
    so."""
    waiting = trio.Event()
    outcome_made, answered = threading.Event(), threading.Event()
    told: list[bool] = []

    def hang_up_late(ctx: ToolContext, args: Any) -> dict[str, Any]:
        trio.from_thread.run_sync(waiting.set)
        outcome_made.wait(10)
        try:
            told.append(trio.from_thread.run(ctx.send, End()))
        except BaseException as err:        # shown in the assertion below, not lost here
            told.append(repr(err))
        answered.set()
        return {"ended": told[-1]}

    env, outbound = _env(hang_up_late)
    socket = MemorySocket()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(relay_writer.run, socket=socket, outbound=outbound,
                                   stats=WriterStats()))
        results_send, results = trio.open_memory_channel[ToolOutcome](1)
        with tool_executor.ToolExecutor(nursery, env) as executor:
            executor.submit(ToolBatch((ToolCall("tu_hold", "holdMusic", {}),
                                       ToolCall("tu_look", "lookUp", {})), results_send))
        await waiting.wait()
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(LIMIT_S)
        outcome = await results.receive()
        outcome_made.set()
        await trio.to_thread.run_sync(answered.wait, 10)
        mock_clock.autojump_threshold = 0       # lookUp, a side effect, runs to its end
    assert (outcome.name, outcome.status) == ("holdMusic", "error")
    assert not outcome.ends_call
    assert told == [False]
    assert [f["type"] for f in socket.pending()] == []
