"""Runs the conversation: one turn at a time, each started by a command from the interrupt
handler, and owns the history.

A new prompt or key supersedes the turn in flight; a barge-in cancels it and then cuts the
history down to what Twilio says the caller heard. Sealed history goes to the write-behind
queue at the start of each turn, never awaited: no store round trip precedes a first token.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import suppress
from functools import partial
from typing import Any, assert_never

import trio

from actors import turn
from actors.context import CallContext
from actors.history import History, Mark
from actors.messages import (
    BargeIn,
    EndCall,
    KeyPressed,
    Reprompt,
    ToolCall,
    TurnCommand,
    UserSaid,
)
from actors.relay_control import ReplyFlags
from actors.turn_slot import TurnSlot
from voiceagent.logs import redact, turn_var

log = logging.getLogger(__name__)

MAX_PLAYING = 8         # turn starts kept as candidates for an interrupt's heard words

Persist = Callable[[list[tuple[int, dict[str, Any], dict[str, Any]]]], None]


async def run(*, commands: trio.MemoryReceiveChannel[TurnCommand], ctx: CallContext,
              persist: Persist) -> None:
    """Returns when ``commands`` ends, after cancelling the turn in flight. Owns (and closes)
    ``commands``, ``ctx.outbound`` and ``ctx.tools``."""
    with commands, ctx.outbound, ctx.tools:
        async with trio.open_nursery() as nursery:
            slot = TurnSlot(nursery, ctx.marks)
            playing = _Playing(ctx.history.session_start)
            ending = False                      # EndCall sent: no new turns
            async for command in commands:
                match command:
                    case BargeIn(heard=heard):
                        ctx.stats.barge_ins += 1
                        await slot.cancel_and_wait(reason="barge-in")
                        unsent = ctx.marks.take_unrecorded()
                        start = playing.cut(ctx.history, heard)
                        if start is None:
                            continue
                        if heard is not None:
                            ctx.history.apply_heard(start, heard)
                        elif unsent:
                            ctx.history.drop_unsent(start, unsent)
                    case UserSaid() | KeyPressed() if not ending:
                        # Planned first: a key entry the use case ignores starts no turn, so
                        # it must not cut the reply in flight either (with interruptible
                        # "speech", Twilio goes on playing it).
                        plan = _plan(ctx, command)
                        if plan is None:
                            log.info("key entry ignored: no handler, and the use case's "
                                     "dtmf.default_to_model is false")
                            continue
                        if slot.busy:
                            ctx.stats.superseded += 1
                        await slot.cancel_and_wait(reason="superseded")
                        persist(ctx.history.take_sealed())
                        dropped = ctx.history.trim(ctx.max_history_messages)
                        ctx.history.add_user_text(_user_words(command))
                        if ctx.log_content:
                            log.debug("caller said", extra={
                                "text": redact(_user_words(command))})
                        playing.started(ctx.history.mark(), dropped)
                        ctx.stats.turns += 1
                        await slot.restart(partial(_turn, ctx, plan, command, ctx.stats.turns))
                    case Reprompt(text=text):
                        if not slot.busy and not ending:
                            playing.started(ctx.history.mark())
                            await slot.restart(partial(
                                turn.run, ctx, turn.TurnPlan(say_first=text, use_model=False)))
                    case EndCall(text=text, reason=reason):
                        if ending:
                            continue
                        ending = True
                        log.info("ending the call", extra={"reason": reason})
                        await slot.cancel_and_wait(reason="ending")
                        playing.started(ctx.history.mark())
                        await slot.restart(partial(turn.run, ctx, turn.TurnPlan(
                            say_first=text, use_model=False, end_reason=reason)),
                            reason="ending")
                    case UserSaid() | KeyPressed():
                        pass                    # the call is ending: no new turns
                    case _:
                        assert_never(command)
            await slot.cancel_and_wait(reason="hangup")


class _Playing:
    """Where the turns begin whose words Twilio may still be playing: every turn started since
    the last barge-in (a few at most), since a new turn's audio queues behind the reply still
    playing when a prompt came during it (with reportInputDuringAgentSpeech, a "mhm", then
    maybe a "yeah" that replaces that turn). Twilio's interrupt says what was heard of the
    reply playing, so the heard words go to the newest turn they fit, and everything after
    that turn's start, thrown away by Twilio unheard, is cut with it."""

    __slots__ = ("purged", "starts")

    def __init__(self, start: Mark) -> None:
        self.starts = [start]           # oldest first; the last is the newest turn's
        self.purged = False             # a barge-in since the newest started: none plays

    def started(self, start: Mark, dropped: int = 0) -> None:
        """A turn starts at ``start``, after ``History.trim`` dropped ``dropped`` messages."""
        earlier = [] if self.purged else self.starts[-(MAX_PLAYING - 1):]
        if dropped:
            earlier = [m for s in earlier if (m := s.after_trim(dropped)) is not None]
        self.starts, self.purged = [*earlier, start], False

    def cut(self, history: History, heard: str | None) -> Mark | None:
        """The start to cut from (``heard``: Twilio's words, if it said); after the cut,
        nothing before it plays. None: no turn started since the last cut, which already
        recorded what was heard (a second interrupt must not cut it again: "" would drop
        a message the store already holds)."""
        if self.purged:
            return None
        chosen = self.starts[-1]
        if heard is not None and not history.fits(chosen, heard):
            chosen = next((s for s in reversed(self.starts[:-1]) if history.fits(s, heard)),
                          chosen)
        self.starts, self.purged = [chosen], True
        return chosen


async def _turn(ctx: CallContext, plan: turn.TurnPlan, command: UserSaid | KeyPressed,
                number: int) -> None:
    turn_var.set(number)
    if ctx.relay is not None and isinstance(command, UserSaid):
        # before the reply's first word: Twilio speaks it in the caller's language
        switch = ctx.relay.switch_for(command.lang)
        with suppress(trio.BrokenResourceError, trio.ClosedResourceError):   # caller gone
            for message in ([switch] if switch else []) + ctx.relay.for_caller(command.text):
                await ctx.outbound.send(message)
    await turn.run(ctx, plan, received_at=command.received_at)


def _user_words(command: UserSaid | KeyPressed) -> str:
    if isinstance(command, UserSaid):
        return command.text
    return command.as_words()


def _plan(ctx: CallContext, command: UserSaid | KeyPressed) -> turn.TurnPlan | None:
    if isinstance(command, UserSaid):
        return turn.TurnPlan()
    dtmf = ctx.use_case.dtmf
    handler = dtmf.handlers.get(command.digits)
    if handler is None:
        return turn.TurnPlan() if dtmf.default_to_model else None
    tool = None
    if handler.tool:
        tool = ToolCall(f"dtmf_{ctx.stats.turns + 1}_{handler.tool}"[:64], handler.tool,
                        handler.input)
    return turn.TurnPlan(say_first=handler.reply, tool_first=tool,
                         use_model=handler.to_model or tool is not None,
                         say_first_flags=ReplyFlags(handler.interruptible, handler.preemptible))
