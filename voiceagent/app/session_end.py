"""What ``/action`` answers once the agent ended a call's relay session (its ``end``, or a
session that failed after it): a person, as the use case's handoff says, or a goodbye.

Each handoff is counted here (``voiceagent_handoffs_total``, EMF ``Handoffs``): the socket
of a call handed to a person ends as ``ended_by="end"``, like a goodbye's, and may have been
served by another process than the one Twilio asks; this answer is where the call goes to a
person, or is told no one can take it.
"""

from __future__ import annotations

import json
import logging

from quart import Response

from voiceagent import handoff_language, twiml
from voiceagent.app.action_words import ActionWords, Said
from voiceagent.app.runtime import Runtime
from voiceagent.handoff_data import asks_for_person, parsed
from voiceagent.usecase_lines import DEFAULT_LINES
from voiceagent.usecases import UseCase

log = logging.getLogger(__name__)

# the English defaults (a use case's ``lines`` give its own, per language)
GOODBYE = DEFAULT_LINES["goodbye"]
NO_AGENT = DEFAULT_LINES["no_agent"]


def session_over(runtime: Runtime, call_sid: str, handoff_data: str,
                 use_case: UseCase | None) -> Response:
    """A handoff or a goodbye, as the session's ``end`` asked: the call's relay is over.
    Said in the language the ``end`` says the call last spoke (``action_words``)."""
    if call_sid:
        runtime.relay_answers.relay_ended(call_sid)
    handoff = parsed(handoff_data)
    speaking = use_case
    if speaking is None and (name := handoff_language.use_case_of(handoff)):
        # no session read (a goodbye needs none) or none to read: the use case the end
        # names, as this process holds it, for its words alone
        speaking = runtime.catalog.held(name)
    words = ActionWords(speaking, handoff_language.spoken_in(handoff))
    if not asks_for_person(handoff):
        return _say_and_hang_up(words.line("goodbye"))
    reason = str(handoff.get("reasonCode", ""))
    if use_case is None:
        log.warning("handoff asked for, but the call's session or use case could not be had "
                    "(see the line before): the caller heard goodbye, not a person")
        _count_handoff(runtime, "unavailable", call_sid)
        return _say_and_hang_up(words.line("goodbye"))
    config = use_case.handoff
    log.info("live-agent handoff", extra={"reason": reason, "mode": config.mode})
    if config.mode == "enqueue" and (config.queue or config.workflow_sid):
        _count_handoff(runtime, "enqueue", call_sid)
        said = words.handoff_message()
        return _xml(twiml.enqueue(said.text, queue=config.queue, language=said.language,
                                  workflow_sid=config.workflow_sid, task=json.dumps(handoff)))
    if config.mode == "dial" and config.number:
        _count_handoff(runtime, "dial", call_sid)
        said = words.handoff_message()
        return _xml(twiml.dial(said.text, config.number, said.language))
    log.warning("handoff asked for, but the use case has no handoff target: the caller heard "
                "that no one is available; give its handoff a target (mode enqueue with queue "
                "or workflow_sid, or dial with number) and run `voiceagent config load`",
                extra={"use_case": use_case.name, "mode": config.mode})
    _count_handoff(runtime, "no_target", call_sid)
    return _say_and_hang_up(words.line("no_agent"))


def _xml(document: str) -> Response:
    return Response(document, mimetype=twiml.CONTENT_TYPE)


def _say_and_hang_up(said: Said) -> Response:
    return _xml(twiml.say_and_hang_up(said.text, said.language))


def _count_handoff(runtime: Runtime, outcome: str, call_sid: str) -> None:
    if runtime.metrics is not None:
        runtime.metrics.on_handoff(outcome, call_sid)
