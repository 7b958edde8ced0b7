"""One turn: the model's reply streamed to the caller, tool rounds, and what goes in history.

A turn runs inside its own cancel scope (see ``turn_slot``). Whatever way it ends (done,
barge-in, superseded, hang-up, model error), it records what the caller can have heard, closes
the talk cycle, and leaves the history valid for the next request.

Reasoning (a model's extended thinking) is never spoken. It is kept where a model needs it
back: first in the assistant message of a tool round, verbatim, since a model with thinking and
tools (Anthropic's) refuses the tool-result round without it. A round that ends in words drops
it: a completed turn's thinking may be left out (Anthropic allows it; models before Opus 4.5 and
Sonnet 4.6 ignore it there, later ones would read it), and kept it would add input tokens to
every later request and store space to every call. A tool round the caller cut drops it too:
the next request opens a new turn with the caller's words, so the cut round is an earlier
turn's, and its message no longer holds what the model sent.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import trio

from actors import model_trouble, tool_rounds
from actors.context import CallContext
from actors.messages import End, ToolCall
from actors.model_round import model_round, system_blocks
from actors.relay_control import ReplyFlags
from actors.settling import receive_all
from actors.speaker import Speaker
from voiceagent.errors import LLMError, ModelRejected, ModelToolsRefused
from voiceagent.logs import redact, turn_var
from voiceagent.usecase_lines import DEFAULT_LINES

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 1.0
END_TIMEOUT_S = 10.0    # a goodbye's `end`: the writer may still be sending to a slow Twilio
# The English defaults of the lines a turn says (a use case may give its own, per language:
# ``actors.spoken_lines``); each is said through ``ctx.lines``, by the name in the comment.
TOO_MANY_ROUNDS = DEFAULT_LINES["too_many_rounds"]        # too_many_rounds
APOLOGY_SILENT = DEFAULT_LINES["trouble"]                 # trouble: failed before a word
APOLOGY_CUT = " " + DEFAULT_LINES["lost_thought"]         # lost_thought, after the words
# a model round that ends without a word where the caller waits for one: after a tool round
# (the caller heard "let me check", then silence until the idle re-prompt), stopped by a
# content filter or guardrail, or by maxTokens before its first word (reasoning took them)
NO_WORDS = DEFAULT_LINES["lost_thought"]                  # lost_thought
STOPPED_QUIET = ("content_filtered", "guardrail_intervened", "max_tokens")


@dataclass(frozen=True, slots=True)
class TurnPlan:
    """What starts the turn: the model (a prompt), or a keypad handler's reply and tool."""

    say_first: str | None = None
    say_first_flags: ReplyFlags = field(default_factory=ReplyFlags)   # a DTMF reply's flags
    tool_first: ToolCall | None = None
    use_model: bool = True
    end_reason: str | None = None       # send `end` after speaking (a polite end of call)


async def run(ctx: CallContext, plan: TurnPlan, *, received_at: float | None = None) -> None:
    speaker = Speaker(ctx.outbound, ctx.token_hold_s)
    rounds: list[tool_rounds.ToolRound] = []
    marks = (len(ctx.stats.rounds), len(ctx.stats.tools))
    cut_by: str | None = None
    model_error: str | None = None
    end_data = None if plan.end_reason is None else json.dumps({"reasonCode": plan.end_reason})
    gave_up: tuple[str, str] | None = None
    try:
        gave_up = await _say_all(ctx, plan, speaker, rounds)
        if gave_up is not None:
            # counted as a model error is: a model stuck in a tool loop, or answering with
            # nothing, would otherwise have the caller hear the same apology every turn
            ending = model_trouble.failed(ctx, gave_up[0])
            end_data = ending or end_data
            await _apologise(ctx, speaker, gave_up[1], last=ending is not None)
        await speaker.finish()
    except trio.Cancelled as cancel:
        cut_by = await _why_cancelled(cancel)
        with trio.move_on_after(ctx.tool_wait_s, shield=True):
            await tool_rounds.settle_side_effects(ctx, rounds)
        tool_rounds.record_cut(ctx, speaker, rounds)
        raise
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        cut_by = "writer-gone"                  # the caller hung up mid-turn: end quietly
        tool_rounds.record_cut(ctx, speaker, rounds)
    except LLMError as err:
        model_error = type(err).__name__
        ctx.stats.model_errors += 1
        _log_model_error(ctx, err)
        # the same failure turn after turn; a refusal of the use case's tools, on every one
        ending = model_trouble.failed(ctx, err.code,
                                      certain=isinstance(err, ModelToolsRefused))
        end_data = ending or end_data
        try:
            with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await speaker.flush()       # what the model said before it failed
                # a hold line is not the model's words: the model said nothing of its reply
                await _apologise(ctx, speaker,
                                 ctx.lines("trouble" if speaker.quiet else "lost_thought"),
                                 last=ending is not None)
        except trio.Cancelled as cancel:    # the caller cut into the apology
            cut_by = await _why_cancelled(cancel)
            tool_rounds.record_cut(ctx, speaker, rounds)
            raise
        ctx.history.add_assistant(ctx.marks.sent_part(speaker.segment))
    else:
        if gave_up is None:
            model_trouble.answered(ctx, marks[0])
        ctx.history.add_assistant(ctx.marks.sent_part(speaker.segment))
        if ctx.relay is not None and speaker.spoke:
            with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                for message in ctx.relay.for_agent(ctx.history.last_assistant_text()):
                    await ctx.outbound.send(message)
    finally:
        if ctx.log_content and speaker.spoke and log.isEnabledFor(logging.DEBUG):
            log.debug("agent said", extra={"text": redact(ctx.history.last_assistant_text())})
        with (trio.move_on_after(CLOSE_TIMEOUT_S, shield=True),
              suppress(trio.BrokenResourceError, trio.ClosedResourceError)):
            await speaker.close()
        if end_data is not None:
            # A goodbye ends the session even when a barge-in or a model error cut it: the
            # streamer ignores everything once it is ending, so without ``end`` the caller
            # was left with an agent that answers nothing until they hang up. It gets its
            # own, longer bound: a writer still sending the goodbye to a slow Twilio made
            # the closer's second drop it. A caller gone ends the wait at once (the writer
            # stops and its channel breaks).
            with (trio.move_on_after(END_TIMEOUT_S, shield=True),
                  suppress(trio.BrokenResourceError, trio.ClosedResourceError)):
                await ctx.outbound.send(End(end_data))
        # The closer above went through the writer after the first token did, so the writer
        # has stamped the first token's send by now (unless the caller was gone first).
        latency_s = None
        if speaker.first_token_sent_at is not None and received_at is not None:
            latency_s = speaker.first_token_sent_at - received_at
            ctx.stats.latencies_s.append(latency_s)
        _summarise(ctx, marks, kind="caller" if received_at is not None else "system",
                   latency_s=latency_s, cut_by=cut_by, model_error=model_error,
                   unfinished=tool_rounds.unfinished(ctx, rounds))


async def _why_cancelled(cancel: trio.Cancelled) -> str:
    """Why the turn was cut. A deadline inside the turn (a model's pacing sleep, a hold
    window) that expired in the same scheduler tick as the turn's cancel may have raised
    first, with no reason; a checkpoint here raises the cancel of the turn's own scope."""
    try:
        await trio.lowlevel.checkpoint()
    except trio.Cancelled as own:
        return _named(own) or _named(cancel) or "cancelled"
    return _named(cancel) or "cancelled"


def _named(cancel: trio.Cancelled) -> str | None:
    """The reason our own cancels give (barge-in, superseded, ...). trio writes its own for
    a nursery whose child raised: the exception's repr, which carries what it was handed (the
    caller's words) into the "turn done" line, and was a new /metrics series per failure."""
    return cancel.reason if cancel.source == "explicit" else None


async def _apologise(ctx: CallContext, speaker: Speaker, apology: str, *, last: bool) -> None:
    """The apology that asks the caller again; on the last failed turn in a row, the words
    that end the call instead (none when a person takes over). The speaker keeps them apart
    from words said before them."""
    words = model_trouble.last_words(ctx) if last else apology
    if words:
        await speaker.say_text(words)


async def _say_all(ctx: CallContext, plan: TurnPlan, speaker: Speaker,
                   rounds: list[tool_rounds.ToolRound]) -> tuple[str, str] | None:
    """Speak the turn. When it ends without an answer, what it gives up with, not yet said:
    the code ``model_trouble`` logs, and the apology."""
    if plan.say_first:
        speaker.flags = plan.say_first_flags
        await speaker.say_text(plan.say_first)
        speaker.flags = ReplyFlags()
    calls: tuple[ToolCall, ...] = (plan.tool_first,) if plan.tool_first else ()
    reasoning: tuple[Mapping[str, Any], ...] = ()
    if not calls and not plan.use_model:
        return None
    rounds_done = 0
    tools_spoke = False             # the last tool round sent the caller audio or digits
    fillers: set[str] = set()       # said in this turn: each once
    system: tuple[str, ...] | None = None    # the turn's, from its first model round on
    while True:
        if calls:
            if rounds_done >= ctx.max_tool_rounds:
                return "TooManyToolRounds", ctx.lines("too_many_rounds")
            outcomes = await tool_rounds.run_round(ctx, speaker, calls, rounds, reasoning, fillers)
            rounds_done += 1
            tools_spoke = any(o.spoke for o in outcomes)
            if any(o.ends_call for o in outcomes):
                return None
        if ctx.settling:                # a cut turn's side-effect tool: its result first
            await receive_all(ctx, speaker=speaker, fillers=fillers)
        # not after a tool's audio or digits: the caller hears those, the model's words
        # queue behind them. A later round is covered too while the caller has heard nothing
        # in the turn (the model went straight to a tool too fast for its filler); anything
        # sent (the line itself, a filler, the model's words) ends that: once a turn at most.
        system = system or system_blocks(ctx)
        # in the language spoken now: a tool round before it may have switched it
        asked = await model_round(ctx, speaker, None if tools_spoke or speaker.spoke
                                  else ctx.lines.hold_line(), system=system)
        calls, reasoning = asked.calls, asked.reasoning
        if not calls:
            stop_reason = ctx.stats.rounds[-1].stop_reason
            if speaker.quiet and not tools_spoke and (rounds_done or stop_reason in STOPPED_QUIET):
                return "NoWords", ctx.lines("lost_thought")
            if stop_reason == "max_tokens" and speaker.mid_sentence:
                # not half a sentence, then silence
                return "CutAtMaxTokens", ctx.lines("lost_thought")
            return None


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _summarise(ctx: CallContext, marks: tuple[int, int], *, kind: str,
               latency_s: float | None, cut_by: str | None, model_error: str | None,
               unfinished: list[dict[str, str]]) -> None:
    """The turn's one summary line ("turn done"), also handed to ``ctx.on_turn``; a cut
    turn's tools in flight (``tools_cut``) are in the line only: no tool finished them."""
    rounds = ctx.stats.rounds[marks[0]:]
    first = rounds[0] if rounds else None
    summary: dict[str, Any] = {
        "kind": kind, "call_sid": ctx.call_sid, "turn": turn_var.get(),
        "latency_ms": _ms(latency_s),
        "first_token_ms": _ms(first.first_token_s) if first else None,
        "overhead_ms": _ms(first.overhead_s) if first else None,
        "first_token_ms_by_round": [_ms(r.first_token_s) for r in rounds
                                    if r.first_token_s is not None],
        "rounds": len(rounds),
        "input_tokens": sum(r.input_tokens for r in rounds),
        "output_tokens": sum(r.output_tokens for r in rounds),
        "stop_reason": rounds[-1].stop_reason if rounds else ("cancelled" if cut_by else "none"),
        "barge_in": cut_by == "barge-in", "cut_by": cut_by, "model_error": model_error,
        "tools": [{"tool": name, "status": status, "duration_ms": _ms(seconds)}
                  for name, status, seconds in ctx.stats.tools[marks[1]:]]}
    line = {k: v for k, v in summary.items()
            if k not in ("call_sid", "turn", "first_token_ms_by_round")}
    if len(summary["first_token_ms_by_round"]) > 1:
        # a slow tool round's model (its prompt grown by the results) is told from a slow
        # first round only here: ``first_token_ms`` is the first round's
        line["first_token_ms_by_round"] = summary["first_token_ms_by_round"]
    if unfinished:
        line["tools_cut"] = unfinished
    log.info("turn done", extra=line)
    if ctx.on_turn is not None:
        try:
            ctx.on_turn(summary)
        except Exception:
            log.exception("turn summary hook failed")


def _log_model_error(ctx: CallContext, err: LLMError) -> None:
    """A refusal is this call's history: its shape, each time. Any other error is the
    model's state, the same for every call (the backend logs it, in proportion), and the
    "turn done" line names it: here at DEBUG only, or throttling wrote this per turn. A
    refusal of the use case's tools is the model's state too (every call offers them)."""
    extra: dict[str, object] = {"code": err.code, "kind": type(err).__name__}
    if not isinstance(err, ModelRejected) or isinstance(err, ModelToolsRefused):
        log.debug("model error, apologising", extra=extra)
        return
    extra["history_shape"] = [
        f"{m['role'][0]}:{'+'.join(next(iter(b)) for b in m['content'])}"
        for m in ctx.history.for_request()]
    log.warning("model error, apologising", extra=extra)
