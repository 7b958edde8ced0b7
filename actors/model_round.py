"""One model round of a turn: the request built from the call, the reply streamed into the
speaker (token by token, or one hold window at a time once a clause is out), and the round's
record in the call's statistics.

Apart from ``turn``, which decides what a turn does around its rounds (tool rounds, what is
recorded when it is cut, its summary): this module only reads one reply, so the turn sees
the tool calls it asked for and nothing of how its text was paced.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, assert_never

import trio

from actors.context import CallContext, ModelRound
from actors.hold_line import covering
from actors.messages import ToolCall
from actors.speaker import Speaker
from voiceagent.errors import LLMError
from voiceagent.llm.base import (
    HeldReads,
    LLMEvent,
    LLMRequest,
    Reasoning,
    StreamEnd,
    TextDelta,
    ToolUseRequest,
    Usage,
)


@dataclass(frozen=True, slots=True)
class Asked:
    """What a whole reply asks of the turn: its tool calls, and its reasoning blocks (for the
    tool round's assistant message; the turn decides where they are kept)."""

    calls: tuple[ToolCall, ...] = ()
    reasoning: tuple[Mapping[str, Any], ...] = ()


def system_blocks(ctx: CallContext) -> tuple[str, ...]:
    """The call's system prompt, and the note on which language to answer in once the call
    moved off its first one. Taken once a turn, at its first model round (``turn``): a note
    that changed between two rounds of one turn (a tool switched the language) changed what
    the first round's reasoning was signed under, and a model binding its thinking to that
    (``voiceagent.llm.binding``) was then sent the tool round without its reasoning, which
    Claude thinking with tools refuses. The tool's result says the new language meanwhile."""
    note = ctx.relay.language_note() if ctx.relay is not None else None
    return (ctx.system_prompt, note) if note else (ctx.system_prompt,)


async def model_round(ctx: CallContext, speaker: Speaker, hold_line: str | None = None, *,
                      system: tuple[str, ...]) -> Asked:
    """One request to the model, its reply said as it streams: what it asked for. The round
    is recorded in ``ctx.stats`` however it ends (``cancelled`` when cut, ``model_error``
    when the model failed). ``hold_line``: said if the model is slow to begin
    (``actors.hold_line``). ``system``: the turn's blocks (``system_blocks``)."""
    request = LLMRequest(
        call_sid=ctx.call_sid, use_case=ctx.use_case.name, model_id=ctx.model_id,
        system=system,
        messages=ctx.history.for_request(),
        tools=ctx.use_case.tool_specs(), inference=ctx.use_case.inference.to_config(),
        options=ctx.use_case.model_options.to_options(),
        language=ctx.relay.language.tts if ctx.relay is not None else None)
    received = _Received()
    failed = False
    events: object = None
    try:
        async with covering(hold_line, speaker) as cover, ctx.llm.stream(request) as events:
            ctx.marks.upstream(events)          # a barge-in closes it from the reader's task
            take_ready = events.take_ready if isinstance(events, HeldReads) else None
            # TOKEN_HOLD_MS=0 is one frame per token, the benchmarks' unchunked baseline
            together = take_ready if ctx.token_hold_s > 0 else None
            with suppress(trio.EndOfChannel):
                first = await events.receive()
                await cover.begun()             # the hold line, if it was due, is out whole
                await _streamed(first, together, speaker, received)
                while received.end is None:
                    if speaker.flush_at == math.inf:
                        await _streamed(await events.receive(), together, speaker, received)
                    elif take_ready is not None:
                        await _held_windows(speaker, take_ready, received, ctx.token_hold_s)
                    else:
                        # One deadline for the whole window, not one per token. A clause-end
                        # flush cut by it keeps its text held; the flush below sends it.
                        with trio.move_on_at(speaker.flush_at):
                            while speaker.flush_at < math.inf:
                                await _take(await events.receive(), speaker, received)
                        await speaker.flush()
    except LLMError:
        failed = True
        raise
    finally:
        if events is not None:
            ctx.marks.upstream_done(events)
        ctx.stats.rounds.append(_round_record(ctx, received.end, received.overhead_s,
                                              failed=failed))
    return Asked(tuple(received.calls), received.reasoning)


@dataclass
class _Received:
    calls: list[ToolCall] = field(default_factory=list)
    reasoning: tuple[Mapping[str, Any], ...] = ()
    overhead_s: float | None = None     # first delta received -> handed to the writer
    end: StreamEnd | None = None


async def _held_windows(speaker: Speaker, take_ready: Callable[[], Awaitable[list[LLMEvent]]],
                        received: _Received, hold_s: float) -> None:
    """Text is held (the reply's first clause is out): the model is read once per hold window,
    not once per token, and what came in the window goes out in one frame at its end. The
    caller is listening to the first clause meanwhile, so a later clause sent at the end of
    its window instead of at its last word is not heard; the turn wakes a few times a
    second instead of at every token. Returns when a window brought nothing (the model paused
    or ended): the next token is waited for as usual."""
    due = speaker.flush_at
    while True:
        await trio.sleep_until(due)         # a cut here: the held text was never sent
        batch = await take_ready()
        # the window's words in one call; the other events (a tool call, the end) say nothing
        await speaker.hold([event.text for event in batch if isinstance(event, TextDelta)])
        for event in batch:
            if not isinstance(event, TextDelta):
                await _take(event, speaker, received)
        if received.end is not None:
            return                          # the reply's last frame carries it, last: true
        await speaker.flush()
        if not batch:
            return
        due = trio.current_time() + hold_s


async def _streamed(first: LLMEvent,
                    take_ready: Callable[[], Awaitable[list[LLMEvent]]] | None,
                    speaker: Speaker, received: _Received) -> None:
    """A streamed token, and whatever else had arrived with it: one frame for them all, not
    one each. Tokens arrive together when the model bursts or the turn's task ran late (the
    machine is loaded, exactly when a frame's cost counts: ~135 Python frames in the writer
    and hypercorn, whatever its size); sent together they go out sooner, not later. On a
    quiet machine nothing else has arrived, and each token is still its own frame. The
    speaker's clause rule still splits them: the first clause's tokens go at once, the
    rest is held as if it had come one by one (``Speaker.say_together``). ``take_ready``
    None: one frame a token (no ``HeldReads``, or ``TOKEN_HOLD_MS=0``)."""
    if take_ready is None or type(first) is not TextDelta:
        await _take(first, speaker, received)
        return
    at = trio.current_time() if received.overhead_s is None else 0.0
    try:
        ready = await take_ready()
    except LLMError:
        await _take(first, speaker, received)   # as before: said, then the failure
        raise
    if not ready:
        await _take(first, speaker, received)
        return
    await speaker.say_together([first.text, *(e.text for e in ready if type(e) is TextDelta)])
    if received.overhead_s is None:
        received.overhead_s = trio.current_time() - at
    for event in ready:
        if type(event) is not TextDelta:
            await _take(event, speaker, received)


async def _take(event: LLMEvent, speaker: Speaker, received: _Received) -> None:
    match event:
        case TextDelta(text=text) if received.overhead_s is not None:
            await speaker.say(text)             # the round's overhead is measured: no clock
        case TextDelta(text=text):
            at = trio.current_time()
            await speaker.say(text)
            received.overhead_s = trio.current_time() - at
        case ToolUseRequest():
            received.calls.append(event)
        case Reasoning(blocks=blocks):
            received.reasoning = blocks
        case StreamEnd():
            received.end = event
        case _:
            assert_never(event)


def _round_record(ctx: CallContext, end: StreamEnd | None, overhead_s: float | None, *,
                  failed: bool) -> ModelRound:
    """A round that ended with no reply is ``model_error`` when the model failed, else
    ``cancelled`` (a barge-in, a new prompt, the hang-up): an alarm or a query on
    ``StopReason=cancelled`` would otherwise count model errors as the callers' doing."""
    usage = end.usage if end is not None and end.usage is not None else Usage()
    stop_reason = end.stop_reason if end else "model_error" if failed else "cancelled"
    return ModelRound(
        turn=ctx.stats.turns, stop_reason=stop_reason,
        first_token_s=end.first_token_s if end else None, overhead_s=overhead_s,
        input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
        cache_read_tokens=usage.cache_read_tokens, cache_write_tokens=usage.cache_write_tokens)
