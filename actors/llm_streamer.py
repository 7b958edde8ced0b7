"""Runs the conversation: one turn at a time, each started by a command from the interrupt
handler, and owns the history.

A new prompt or key supersedes the turn in flight; a barge-in cancels it and then cuts the
history down to what Twilio says the caller heard. Sealed history goes to the write-behind
queue at the start of each turn, never awaited: no store round trip precedes a first token.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from contextlib import suppress
from functools import partial
from typing import Any, assert_never

import trio

from actors import settling, turn
from actors.channel import Receives
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


async def run(*, commands: Receives[TurnCommand], ctx: CallContext,
              persist: Persist) -> None:
    """Returns when ``commands`` ends, after cancelling the turn in flight. Owns (and closes)
    ``commands``, ``ctx.outbound`` and ``ctx.tools``."""
    with commands, ctx.outbound, ctx.tools:
        async with trio.open_nursery() as nursery:
            slot = TurnSlot(nursery, ctx.marks)
            playing = _Playing(ctx.history.session_start)
            ending = False                      # EndCall sent: no new turns
            async for command in commands:
                # `end` taken by the writer (a tool's too: endCall, a handoff): the session
                # is over, and a turn started now would only be billed, never heard
                closed = ending or ctx.marks.ended
                match command:
                    case BargeIn(heard=heard, duration_ms=duration_ms, played=played):
                        ctx.stats.barge_ins += 1
                        through = ctx.marks.take_cut()
                        # The caller is speaking: stop, except the goodbye if it began
                        # after the cut (it went out after the interrupt, and tells them why
                        # the call ends). Heard words cut only turns up to the one cut.
                        if through >= ctx.marks.turn or not ending:
                            await slot.cancel_and_wait(reason="barge-in")
                        playing.cut(ctx.history, through, heard,
                                    ctx.marks.take_unrecorded(through), played, duration_ms)
                    case UserSaid() | KeyPressed() if not closed:
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
                        dropped = ctx.history.trim(ctx.max_history_messages,
                                                   ctx.max_history_chars)
                        ctx.history.add_user_text(_user_words(command))
                        if ctx.log_content and log.isEnabledFor(logging.DEBUG):
                            log.debug("caller said", extra={
                                "text": redact(_user_words(command))})
                        start = ctx.history.mark()
                        ctx.stats.turns += 1
                        playing.started(await slot.restart(
                            partial(_turn, ctx, plan, command, ctx.stats.turns)), start, dropped)
                    case Reprompt(text=text):
                        if not slot.busy and not closed:
                            start = ctx.history.mark()
                            playing.started(await slot.restart(partial(
                                turn.run, ctx, turn.TurnPlan(say_first=text, use_model=False))),
                                start)
                    case EndCall(text=text, reason=reason):
                        if closed:
                            continue
                        ending = True
                        log.info("ending the call", extra={"reason": reason})
                        await slot.cancel_and_wait(reason="ending")
                        start = ctx.history.mark()
                        playing.started(await slot.restart(partial(turn.run, ctx, turn.TurnPlan(
                            say_first=text, use_model=False, end_reason=reason)),
                            reason="ending", goodbye=True), start)
                    case UserSaid() | KeyPressed():
                        pass                    # the call is ending or ended: no new turns
                    case _:
                        assert_never(command)
            await slot.cancel_and_wait(reason="hangup")
            # a cut turn's side-effect tool still running: its result, for the store
            with trio.move_on_after(ctx.tool_wait_s, shield=True):
                await settling.receive_all(ctx)


def drop_unsent_at_end(ctx: CallContext) -> None:
    """Once the call's actors are done: words of the last turn that the writer withheld after
    the turn had recorded them (its last frame failed to send on a broken socket, or came
    after ``end``), with no barge-in left to take them off, come off now, before the last
    write to the store: a reconnect resumes what was sent, not what the model said."""
    for unsent in ctx.marks.take_all_unrecorded():
        # the last assistant text is that turn's: a later turn that began after the socket
        # broke said nothing (a tool round of its, with no words, is passed over; the words
        # only come off if they end the last assistant text)
        ctx.history.drop_unsent(Mark(0), unsent)


class _Playing:
    """Where the turns begin whose words Twilio may still be playing: every turn started since
    the last barge-in (a few at most), since a new turn's audio queues behind the reply still
    playing when a prompt came during it (with reportInputDuringAgentSpeech, a "mhm", then
    maybe a "yeah" that replaces that turn). Twilio's interrupt says what was heard of the
    reply playing, so the heard words go to the newest turn they fit, and everything after
    that turn's start up to the turn the reader cut, thrown away by Twilio unheard, is cut
    with it. A turn begun after the reader's cut (a goodbye) is heard, and stays."""

    __slots__ = ("starts",)

    def __init__(self, start: Mark) -> None:
        self.starts: list[tuple[int, Mark]] = [(0, start)]  # (turn, start), oldest first

    def started(self, number: int, start: Mark, dropped: int = 0) -> None:
        """Turn ``number`` starts at ``start``, after ``History.trim`` dropped ``dropped``
        messages."""
        earlier = self.starts[-(MAX_PLAYING - 1):]
        if dropped:
            earlier = [(n, m) for n, s in earlier if (m := s.after_trim(dropped)) is not None]
        self.starts = [*earlier, (number, start)]

    def cut(self, history: History, through: int, heard: str | None, unsent: str,
            played: tuple[str, ...] = (), duration_ms: int | None = None) -> None:
        """Record the caller cutting off turn ``through``: the turns up to it are cut to
        ``heard`` (Twilio's words, if it said) or lose ``unsent`` (what the writer withheld),
        and none of them plays any more. With none left (a second interrupt into the same
        turn) nothing is cut again: "" would drop a message the store already holds.

        ``played`` (tokensPlayed, when Twilio did not say or said nothing was heard of the
        item playing: what played before it was) stands in for ``heard`` only where it fits
        a turn: a record we put together may begin in the middle of a reply that played
        across a turn's start, and must not be written over another reply's words (Twilio's
        own ``heard`` that fits no turn is its rendering of the newest: kept)."""
        cut = [start for number, start in self.starts if number <= through]
        later = [(number, start) for number, start in self.starts if number > through]
        if not cut:
            return
        end = later[0][1] if later else None
        chosen = cut[-1]
        if not heard and played:
            chosen, option = next(((start, option) for option in played
                                   for start in reversed(cut) if history.fits(start, option, end)),
                                  (chosen, None))
            if option is None:          # what was sent counts, or Twilio's "nothing"
                log.info("tokensPlayed fit no reply still playing",
                         extra={"heard_reported": heard is not None})
            heard = heard if option is None else option
        elif heard and not history.fits(chosen, heard, end):
            chosen = next((s for s in reversed(cut[:-1]) if history.fits(s, heard, end)),
                          chosen)
        moved = history.record_cut(chosen, end, heard=heard, unsent=unsent,
                                   duration_ms=duration_ms)
        self.starts = [(number, moved(start)) for number, start in later]


async def _turn(ctx: CallContext, plan: turn.TurnPlan, command: UserSaid | KeyPressed,
                number: int) -> None:
    turn_var.set(number)
    if ctx.relay is not None and isinstance(command, UserSaid):
        # before the reply's first word: Twilio speaks it in the caller's language
        switch = ctx.relay.switch_for(command.lang)
        with suppress(trio.BrokenResourceError, trio.ClosedResourceError):   # caller gone
            for message in ([switch] if switch else []) + ctx.relay.for_caller(command.text):
                await ctx.outbound.send(message)
                if message is switch:       # taken: Twilio speaks it, for tools too
                    ctx.relay.language.note(switch)
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
        # unique in the whole conversation, a resumed one too (its turns count from 0
        # again): some models refuse a toolUse id used before
        tool = ToolCall(f"dtmf_{secrets.token_hex(6)}_{handler.tool}"[:64], handler.tool,
                        handler.input)
    # its reply in the language spoken now (a ``languages`` entry's ``dtmf_replies``)
    return turn.TurnPlan(say_first=ctx.lines.dtmf_reply(command.digits), tool_first=tool,
                         use_model=handler.to_model or tool is not None,
                         say_first_flags=ReplyFlags(handler.interruptible, handler.preemptible))
