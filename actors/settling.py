"""Side-effect tools a cut turn left running: answered in the history once they finish,
awaited by the next model round, with the tool's filler said if the caller waits for them.

A barge-in (or a new prompt) cuts a turn whose side-effect tool (placing an order) is still
running. The tool runs on, and its toolUse and result must stand in the history ahead of the
caller's next words, so the model knows the order was placed and the history stays valid
(every toolUse answered in the next message). The cut turn used to wait for the tool in its
cleanup, and the call waited with it: nothing was read from the caller's next words until the
tool ended, up to its timeout, and the caller heard silence all that time after they spoke.

Now the cut turn records the toolUse at once with a stand-in result (``PENDING_RESULT``, an
error that says whether it ran is unknown: what a crash or a hang-up now would leave) and
hands the call over here. The caller's next turn starts at once; before its model round it
waits for the real results, which replace the stand-ins where they stand, and if that wait
passes ``FILLER_AFTER_S`` it says the tool's ``filler``, as the first words of its reply. No
generic line when the tool has none: like a filler, words said to callers are the use case's,
in its language and manner. A turn with no model round (a re-prompt, a goodbye, a keypad
reply) does not wait: the history is valid with the stand-in.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import trio

from actors.context import CallContext
from actors.messages import ToolBatch, ToolCall, ToolOutcome
from actors.speaker import Speaker
from actors.tool_filler import FILLER_AFTER_S, filler_for, say_filler

log = logging.getLogger(__name__)

PENDING_RESULT = ("The caller cut in while this tool ran, and its result was not recorded; "
                  "whether it ran is unknown. Check before repeating it.")


@dataclass
class Settling:
    """One cut tool round's calls still running, each already in the history with a stand-in
    result."""

    batch: ToolBatch
    results: trio.MemoryReceiveChannel[ToolOutcome]
    outcomes: list[ToolOutcome]                 # every outcome received so far
    pending: set[str] = field(default_factory=set)     # toolUseIds still to answer


def stand_in(call: ToolCall) -> dict[str, object]:
    return {"toolResult": {"toolUseId": call.tool_use_id, "status": "error",
                           "content": [{"text": PENDING_RESULT}]}}


def _take(ctx: CallContext, settling: Settling, outcome: ToolOutcome) -> None:
    settling.outcomes.append(outcome)
    if outcome.tool_use_id in settling.pending:
        settling.pending.discard(outcome.tool_use_id)
        if not ctx.history.answer(outcome.to_block()):
            log.info("a cut tool's result came after its call left the history",
                     extra={"tool": outcome.name})
        if outcome.spoke:
            ctx.history.audio_uses.add([outcome.tool_use_id])


async def receive_all(ctx: CallContext, *, speaker: Speaker | None = None,
                      fillers: set[str] | None = None) -> None:
    """Answer every stand-in as its tool ends. With ``speaker`` (a turn about to ask the
    model, nothing said yet), the tool's filler is said once the wait passes
    ``FILLER_AFTER_S``. A cancel leaves what is still running for the next turn."""
    said = fillers if fillers is not None else set()
    due = (trio.current_time() + FILLER_AFTER_S
           if speaker is not None and speaker.quiet else math.inf)
    while ctx.settling:
        settling = ctx.settling[0]
        if not settling.pending:
            ctx.settling.pop(0)
            continue
        with trio.move_on_at(due) as waiting:
            try:
                outcome = await settling.results.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                settling.pending.clear()        # never answered: the stand-in stays
                continue
            _take(ctx, settling, outcome)
        if waiting.cancelled_caught:
            due = math.inf
            filler = next((f for s in ctx.settling if (f := filler_for(
                ctx.lines, ctx.tools, s.batch, s.outcomes, said)) is not None), None)
            if filler is not None and speaker is not None:
                said.add(filler)
                await say_filler(speaker, filler)
