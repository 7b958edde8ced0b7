"""A turn's tool rounds: each run through the executor with its filler, recorded in the
history when it ends, and, when the caller cuts the turn, settled: what the cut cannot undo is
recorded, a side-effect tool still running is handed to ``actors.settling``, and what was still
in flight is named for the turn's summary line (``actors.turn``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import trio

from actors.context import CallContext
from actors.messages import ToolBatch, ToolCall, ToolOutcome
from actors.relay_control import ReplyFlags
from actors.settling import Settling, stand_in
from actors.speaker import Speaker
from actors.tool_executor import CANCELLED, ENDED, MAX_CALLS_PER_ROUND
from actors.tool_filler import filler_due, filler_for, say_filler


@dataclass
class ToolRound:
    """A round still in ``rounds`` while it runs: what a cut settles and records of it."""

    text: str                        # said before its toolUse: the model's words, or a filler
    calls: tuple[ToolCall, ...]
    batch: ToolBatch
    results: trio.MemoryReceiveChannel[ToolOutcome]
    reasoning: tuple[Mapping[str, Any], ...] = ()     # the reply's, for its message
    outcomes: list[ToolOutcome] = field(default_factory=list)
    delivered: bool = False          # the executor has the batch: outcomes will come


async def run_round(ctx: CallContext, speaker: Speaker, calls: tuple[ToolCall, ...],
                    rounds: list[ToolRound], reasoning: tuple[Mapping[str, Any], ...],
                    fillers: set[str]) -> list[ToolOutcome]:
    await speaker.flush()                   # spoken while the tool runs
    due = filler_due(speaker)
    results_send, results = trio.open_memory_channel[ToolOutcome](len(calls))
    batch = ToolBatch(calls, results_send, turn=ctx.marks.turn)    # this turn: the newest
    current = ToolRound(speaker.segment, calls, batch, results, reasoning)
    rounds.append(current)
    ctx.stats.tool_calls += len(calls)
    if ctx.relay is not None:
        for call in calls[:MAX_CALLS_PER_ROUND]:         # the rest do not run
            for message in ctx.relay.for_tool(call.name):
                await ctx.outbound.send(message)     # before the tool runs: hints, a model
    ctx.tools.submit(current.batch)
    current.delivered = True
    while len(current.outcomes) < len(calls):
        with trio.move_on_at(due) as waiting:
            current.outcomes.append(await results.receive())
        if waiting.cancelled_caught:
            due = math.inf
            filler = filler_for(ctx.lines, ctx.tools, batch, current.outcomes, fillers)
            if filler is not None:
                fillers.add(filler)
                try:
                    await say_filler(speaker, filler)
                finally:                    # what was sent of it, however it ends
                    current.text = speaker.segment
    ordered = _in_call_order(current)
    ctx.stats.tools.extend((o.name, o.status, o.duration_s) for o in ordered)
    ctx.history.add_assistant(current.text, [_use_block(c) for c in calls],
                              reasoning=current.reasoning)
    ctx.history.add_tool_results([o.to_block() for o in ordered])
    ctx.history.audio_uses.add(o.tool_use_id for o in ordered if o.spoke)
    rounds.remove(current)
    speaker.new_segment()
    for call in calls:
        declaration = ctx.use_case.tool(call.name)
        if declaration is not None and declaration.reply is not None:
            speaker.flags = ReplyFlags(declaration.reply.interruptible,
                                       declaration.reply.preemptible)
    return ordered


async def settle_side_effects(ctx: CallContext, rounds: list[ToolRound]) -> None:
    """After a cancel: tools without side effects are abandoned, and their outcomes awaited
    (a cancel at once; one that already sent ``end`` runs on, shielded in the executor), so
    history records what they did. Side-effect tools run on too, but are not waited for:
    their results come in before the next model round (``actors.settling``), so the
    caller's next words are not held up by them."""
    for current in rounds:
        current.batch.abandoned.set()
        while current.delivered and _running(ctx, current, side_effect=False):
            try:
                current.outcomes.append(await current.results.receive())
            except (trio.EndOfChannel, trio.ClosedResourceError):
                break


def _running(ctx: CallContext, current: ToolRound, *, side_effect: bool) -> list[ToolCall]:
    """The round's calls with no outcome yet, with side effects or without."""
    arrived = {o.tool_use_id for o in current.outcomes}
    return [c for c in current.calls if c.tool_use_id not in arrived
            and ctx.tools.side_effect(c.name) == side_effect]


def record_cut(ctx: CallContext, speaker: Speaker, rounds: list[ToolRound]) -> None:
    """Record a cut-short turn: what was spoken, plus the tools that did something the cut
    cannot undo: side effects that really ran, a tool that ended the session (its ``end``
    went out), one that sent the caller audio or digits. Without their reasoning (see the
    module's docstring). A side-effect tool still running gets a stand-in result, answered
    when it ends (``actors.settling``)."""
    for current in rounds:
        done = {o.tool_use_id: o for o in current.outcomes
                if o.side_effect or o.ends_call or o.spoke}
        running = {c.tool_use_id for c in _running(ctx, current, side_effect=True)
                   if current.delivered}
        kept = [c for c in current.calls if c.tool_use_id in done or c.tool_use_id in running]
        ctx.history.add_assistant(current.text, [_use_block(c) for c in kept])
        ctx.history.add_tool_results([done[c.tool_use_id].to_block()
                                      if c.tool_use_id in done else stand_in(c) for c in kept])
        ctx.history.audio_uses.add(c.tool_use_id for c in kept
                                   if c.tool_use_id in done and done[c.tool_use_id].spoke)
        if running:
            ctx.settling.append(Settling(current.batch, current.results, current.outcomes,
                                         running))
        if current.text == speaker.segment:
            speaker.new_segment()
    ctx.history.add_assistant(ctx.marks.sent_part(speaker.segment))


def unfinished(ctx: CallContext, rounds: list[ToolRound]) -> list[dict[str, str]]:
    """A cut turn's tool round still in flight, call by call: ``cut`` (cancelled: it may
    have done part of its work), ``running`` (a side effect, shielded: its "tool done" or
    "tool failed" line comes later), or the status of one that had answered. "turn done"
    listed only finished rounds, so a caller hanging up mid-tool left no trace of which
    tool it was, nor whether an order it was placing went through."""
    unfinished: list[dict[str, str]] = []
    for current in rounds:
        arrived = {o.tool_use_id: ("cut" if o.content in (CANCELLED, ENDED) else o.status)
                   for o in current.outcomes}
        for call in current.calls:
            state = arrived.get(call.tool_use_id) or (
                "running" if current.delivered and ctx.tools.side_effect(call.name) else "cut")
            unfinished.append({"tool": call.name, "state": state})
    return unfinished


def _in_call_order(current: ToolRound) -> list[ToolOutcome]:
    by_id = {o.tool_use_id: o for o in current.outcomes}
    return [by_id[c.tool_use_id] for c in current.calls if c.tool_use_id in by_id]


def _use_block(call: ToolCall) -> dict[str, object]:
    return {"toolUseId": call.tool_use_id, "name": call.name, "input": dict(call.input)}
