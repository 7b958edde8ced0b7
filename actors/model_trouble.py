"""When the model fails turn after turn: the call ends, or goes to a person, instead of the
same apology on every turn.

A turn that gets no answer from the model apologises and asks the caller to say it again, and
the call goes on: one failure is most often passing (a throttled moment, a dropped connection).
But a failure that is the model's state (credentials expired, the model throttled or down for
minutes, a history the model refuses, a model stuck calling tools or answering with nothing)
fails every later turn the same way, and the caller heard the apology each time they spoke,
until they gave up and hung up. So after ``FAILED_TURNS_BEFORE_GOODBYE`` failed turns in a row
the turn ends the session: with the use case's handoff when it has a target (``/action`` then
says its ``message`` and connects a person), else with the words a caller hears when the
server cannot take the call, and ``/action``'s goodbye.

A failed turn is one that ends in an apology asking the caller again (``actors.turn``): its
model call failed (an error, a stall), it reached ``MAX_TOOL_ROUNDS`` without an answer
(``TOO_MANY_ROUNDS``), its model round ended without a word where the caller waits for one
(``NO_WORDS``: after a tool round, or stopped by a filter or maxTokens before a word), or
maxTokens cut its answer mid-sentence. Each is the same loop for the caller, so all count in
one streak. A turn that ends in the model's own words (or a tool's audio, or the call's end)
starts it again; a turn cut by the caller, or with no model round (a re-prompt, a keypad
reply), leaves it as it was. A failure certain to come back on every turn (Bedrock refusing
the use case's tools: the same specs go with every request) ends the call on its first turn:
the apologies in between would change nothing, and a person (the handoff) is what helps.
"""

from __future__ import annotations

import json
import logging

from actors.context import CallContext
from voiceagent import handoff_language
from voiceagent.usecase_lines import DEFAULT_LINES

log = logging.getLogger(__name__)

# Two apologies are a hiccup the caller can ride out; a third in a row is a loop.
FAILED_TURNS_BEFORE_GOODBYE = 3
# the words of a call the server cannot take (``voiceagent.app.web`` says them too), the
# default of the use case's ``cannot_go_on`` line
CANNOT_GO_ON = DEFAULT_LINES["cannot_go_on"]
END_REASON = "model-unavailable"


def failed(ctx: CallContext, code: str, *, certain: bool = False) -> str | None:
    """A turn failed (see the module docstring): the session's ``end`` data when the call
    should end now (this is the last of ``FAILED_TURNS_BEFORE_GOODBYE`` failed turns in a
    row, or ``certain``: every later turn would fail the same way), else None."""
    ctx.stats.failed_in_a_row += 1
    if ctx.stats.failed_in_a_row < FAILED_TURNS_BEFORE_GOODBYE and not certain:
        return None
    handoff = ctx.use_case.handoff.mode != "none"
    # per call, as any other end of a call is; the failure itself is the backend's episode
    log.info("ending the call", extra={"reason": END_REASON, "code": code, "handoff": handoff,
                                       "failed_turns": ctx.stats.failed_in_a_row,
                                       "fails_every_turn": certain})
    data: dict[str, object] = {"reasonCode": END_REASON}
    if handoff:
        # named as the handoff tool names it: /action hands the call off by it when the
        # store cannot give the call's session (an outage of both at once)
        data |= {"handoff": True, handoff_language.USE_CASE_KEY: ctx.use_case.name}
    return json.dumps(data)


def last_words(ctx: CallContext) -> str:
    """What the turn says before its ``end``: nothing when a person takes over (the handoff's
    message is said by ``/action``), else that the call cannot go on."""
    if ctx.use_case.handoff.mode != "none":
        return ""
    return ctx.lines("cannot_go_on")


def answered(ctx: CallContext, first_round: int) -> None:
    """A turn ended with an answer: a round of it that the model completed ends the run of
    failures (a turn with no model round, a re-prompt, says nothing of the model)."""
    if any(r.stop_reason not in ("model_error", "cancelled")
           for r in ctx.stats.rounds[first_round:]):
        ctx.stats.failed_in_a_row = 0
