"""What ``/action`` answers once the agent ended a call's relay session (its ``end``, or a
session that failed after it): a person, as the use case's handoff says, or a goodbye.

A handoff reads no more than it needs: the call's session (for its use case, whose handoff
says where the caller goes), not the call's history, so it waits for no flush of the call's
writes; they land behind it, as the socket's teardown left them. With the store down or
stalled, the caller heard 5 s of silence (that flush) and then the apology for a refused call,
instead of a person.

Each handoff is counted here (``voiceagent_handoffs_total``, EMF ``Handoffs``): the socket
of a call handed to a person ends as ``ended_by="end"``, like a goodbye's, and may have been
served by another process than the one Twilio asks; this answer is where the call goes to a
person, or is told no one can take it.
"""

from __future__ import annotations

import json
import logging

import trio
from quart import Response

import voiceagent.store.records as records
from voiceagent import handoff_language, twiml
from voiceagent.app.action_words import ActionWords, Said
from voiceagent.app.runtime import Runtime
from voiceagent.catalog import UnknownUseCase
from voiceagent.errors import StoreError
from voiceagent.handoff_data import asks_for_person, parsed
from voiceagent.usecase_lines import DEFAULT_LINES
from voiceagent.usecases import UseCase

log = logging.getLogger(__name__)

# the English defaults (a use case's ``lines`` give its own, per language)
GOODBYE = DEFAULT_LINES["goodbye"]
NO_AGENT = DEFAULT_LINES["no_agent"]
# a handoff's read of the call's session, and of its use case: the caller waits in silence,
# so a stalled store costs no more than a store write /twiml waits for (SESSION_WRITE_S)
HANDOFF_READ_S = 2.0


async def handoff_use_case(runtime: Runtime, call_sid: str, handoff_data: str
                           ) -> UseCase | None:
    """The use case whose handoff takes the call, as the call's session names it: this
    process's write-behind queue holds the session when the store was slow as the call began
    (newer than the store's), else the store gives it within HANDOFF_READ_S. A store that
    cannot leaves the use case the ``end`` itself names (the handoff tool's ``useCase``, the
    words' stamp: a signed echo of our own frame), as this process holds it. None: no
    session (said in the log), or its use case is unusable. StoreError: neither could be
    had (the caller hears the apology)."""
    if not call_sid:
        return None
    item = runtime.writer.queued_item(call_sid, records.SESSION_SK)
    if item is None:
        try:
            with trio.fail_after(HANDOFF_READ_S):
                item = await runtime.store.get(call_sid, records.SESSION_SK)
        except (StoreError, trio.TooSlowError) as err:
            return _named_by_the_end(runtime, handoff_data, err)
    session = records.session_from_item(item) if item is not None else None
    if session is None:
        # said here: the answers (a goodbye) cannot tell why
        log.warning("call session not found: it expired (SESSION_TTL_S after the call "
                    "started) or this service did not prepare the call; nothing to hand off")
        return None
    try:
        with trio.fail_after(HANDOFF_READ_S):
            return await runtime.catalog.use_case(session.use_case)
    except UnknownUseCase as err:
        log.error("use case missing or unusable", extra={"error": str(err)[:500]})
        return None
    except trio.TooSlowError:
        # its cache ran out and the store stalls: the use case as this process last read it
        held = runtime.catalog.held(session.use_case)
        if held is None:
            log.error("use case unreadable: the store did not answer",
                      extra={"timeout_s": HANDOFF_READ_S})
            raise StoreError("the store did not answer") from None
        return held


def _named_by_the_end(runtime: Runtime, handoff_data: str, err: Exception) -> UseCase:
    error = str(err)[:300] or f"no answer in {HANDOFF_READ_S} s"
    named = handoff_language.use_case_of(parsed(handoff_data))
    held = runtime.catalog.held(named) if named else None
    if held is None:
        # without the session nothing can be handed off: an apology, not a 500 (Twilio
        # would play its own application error)
        log.error("call session unreadable", extra={"error": error})
        raise StoreError(error) from err
    log.warning("call session unreadable: handing off as the end's use case says",
                extra={"error": error, "use_case": named})
    return held


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
