"""A short sentence said while a slow tool runs, so the caller does not sit in dead air.

Many models call a tool without a word first (the round is just a toolUse): the caller then
heard nothing until the tool returned and the next round spoke, up to the tool's timeout. On
a phone a silence past a second or two makes callers ask "hello?", which barges in. So a tool
declared with a ``filler`` has it said once the tool has run ``FILLER_AFTER_S`` without its
result, when the model said nothing in that round. A tool that answers sooner stays silent:
its answer follows soon enough, and a filler then would only delay it.

The filler is said as the model's own words would be: through the turn's speaker, so a
barge-in cuts it as any reply, and it is recorded, as far as it was sent (or heard), as the
text of the assistant message before its toolUse, as if the model had said it. The next round
sees that it was said and does not say it again. One timer per tool round, nothing per token.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import trio

from actors.messages import ToolBatch, ToolOutcome
from actors.relay_control import ReplyFlags
from actors.speaker import Speaker
from actors.spoken_lines import SpokenLines
from actors.tool_executor import MAX_CALLS_PER_ROUND, ToolExecutor

# How long a tool runs before its filler is said. Silence in a conversation starts to read
# as trouble at about a second (the caller has already waited for the model's first round);
# a lookup that answers within it is heard sooner without a filler queued in front of it.
FILLER_AFTER_S = 1.0


def filler_due(speaker: Speaker) -> float:
    """When to say a filler in the tool round starting now: never when the model already said
    something in the round ("let me check"), or a keypad handler's reply was said."""
    return trio.current_time() + FILLER_AFTER_S if speaker.quiet else math.inf


def filler_for(lines: SpokenLines, tools: ToolExecutor, batch: ToolBatch,
               outcomes: Iterable[ToolOutcome], said: set[str]) -> str | None:
    """The filler of the first call of the round (in the model's order) still running that
    has one (in the language spoken now: ``lines``); None when a call already sent the caller
    audio, digits or ``end``, or the only filler left was said earlier in the turn. A tool
    that ends the call never has one (refused at load; a stored use case or a changed tool is
    checked here too)."""
    if batch.sounded.is_set():
        return None
    done = {o.tool_use_id for o in outcomes}
    for call in batch.calls[:MAX_CALLS_PER_ROUND]:
        filler = lines.filler(call.name)
        if (call.tool_use_id in done or filler is None or filler in said
                or tools.ends_call(call.name)):
            continue
        return filler
    return None


async def say_filler(speaker: Speaker, text: str) -> None:
    """With the TwiML's flags: an earlier tool's ``reply`` controls are for the model's reply
    after that tool, not for this."""
    flags, speaker.flags = speaker.flags, ReplyFlags()
    try:
        await speaker.say_text(text)
    finally:
        speaker.flags = flags
