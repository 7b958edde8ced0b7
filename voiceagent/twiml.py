"""TwiML documents, built with the twilio package (never by string concatenation)."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from twilio.twiml.voice_response import VoiceResponse

from voiceagent.logs import warn_once
from voiceagent.relay.protocol import Setting
from voiceagent.relay_values import not_served
from voiceagent.usecase_relay import on_off
from voiceagent.usecase_xml import not_xml, xml_safe
from voiceagent.usecases import UseCase

log = logging.getLogger(__name__)

MAX_TWIML_BYTES = 64 * 1024          # Twilio's limit for one document
CONTENT_TYPE = "text/xml; charset=utf-8"
# Room kept, when a use case is loaded, for what each call adds: the socket and action URLs
# (a public host and path) and the session token
CALL_ROOM_BYTES = 2 * 1024


def connect_relay(*, ws_url: str, action_url: str, use_case: UseCase,
                  parameters: Mapping[str, str], greeting: bool = True,
                  check_size: bool = True) -> str:
    """``<Connect action><ConversationRelay url …>`` with the use case's attributes, its
    ``<Language>`` children, one ``<Failover>`` holding the backup of each language that
    declares one, and the ``<Parameter>``s.

    ``greeting=False`` leaves the welcome greeting out: on a reconnect Twilio would play it
    again to a caller who is mid-conversation.
    """
    response = VoiceResponse()
    connect = response.connect(action=action_url)
    # TwiML names pass through the builder as-is: lower_camel keeps names without "_"
    name = use_case.name
    attributes = {k: v for k, v in _values(use_case.relay | use_case.relay_extra, name).items()
                  if (greeting or k != "welcomeGreeting") and _served(k, v, name)}
    relay = connect.conversation_relay(url=ws_url, **attributes)
    for entry in use_case.languages:
        relay.language(**_values(entry.attributes(), name))
    backups = [attrs for entry in use_case.languages
               if (attrs := entry.failover_attributes()) is not None]
    if backups:
        failover = relay.add_child("Failover")      # twilio 9.13.0 has no builder for it
        for attrs in backups:
            failover.add_child("Language", **_values(attrs, name))
    for name, value in parameters.items():
        relay.parameter(name=name, value=value)
    document = str(response)
    if check_size and len(document.encode()) > MAX_TWIML_BYTES:
        raise ValueError(f"TwiML for use case {use_case.name!r} is over Twilio's 64 KB limit")
    return document


def size_problem(use_case: UseCase) -> str | None:
    """Why the use case's TwiML would not fit Twilio's limit on a call, else None. Checked
    when files are loaded: at call time the document is refused, and the caller would hear
    Twilio's application error on every call to the use case."""
    document = connect_relay(ws_url="", action_url="", use_case=use_case, parameters={},
                             check_size=False)
    size = len(document.encode())
    if size + CALL_ROOM_BYTES <= MAX_TWIML_BYTES:
        return None
    return (f"its TwiML (the greeting, hints, languages and the other relay attributes) is "
            f"{size} bytes; with {CALL_ROOM_BYTES} kept for the URLs and the session token, "
            f"it must be under Twilio's {MAX_TWIML_BYTES}-byte limit for a document")


def say_and_hang_up(message: str, language: str | None = None) -> str:
    """``<Say>`` then ``<Hangup>``; ``language``: the text's, for Twilio's voice (None: its
    default, en-US)."""
    response = VoiceResponse()
    _say(response, message, "message", language)
    response.hangup()
    return str(response)


def _say(response: VoiceResponse, message: str, where: str, language: str | None) -> None:
    response.say(_text(message, where),
                 language=_text(language, "language") if language else None)


def empty() -> str:
    return str(VoiceResponse())


def _text(text: str, where: str, use_case: str = "") -> str:
    """``text`` as XML can carry it. A use case loaded from a file cannot hold what XML
    cannot (``usecase_xml``), but one an older release stored may: its document is still
    made, and valid, and the log says where to fix it (never the text)."""
    safe = xml_safe(text)
    if safe != text and (use_case, where) not in _WARNED:
        # once per process and attribute: a stored use case is rendered for every call
        _WARNED.add((use_case, where))
        log.warning("TwiML text held characters XML cannot carry: left out; fix the use case",
                    extra={"use_case": use_case, "attribute": where,
                           "characters": not_xml(text)})
    return safe


_WARNED: set[tuple[str, str]] = set()    # (use case, attribute): as many as the config has


def _served(name: str, value: str, use_case: str) -> bool:
    """Whether the attribute goes out. A use case loaded from a file cannot turn on one this
    release does not serve (``relay_values.NOT_SERVED``), but one an older release stored may:
    it is left out, since Twilio would hold each dropped call on a reconnect we refuse rather
    than fail it to ``/action``, which reconnects it, and the log says where to fix it."""
    problem = not_served(name, value)
    if problem is not None:                 # once per process and attribute, as in ``_text``
        warn_once(log, ("not served", use_case, name),
                  "TwiML attribute not served by this release: left out; fix the use case",
                  use_case=use_case, attribute=name, problem=problem)
    return problem is None


def _value(value: Setting) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _values(attributes: Mapping[str, Setting], use_case: str) -> dict[str, str]:
    """TwiML attribute values: on/off attributes as on/off, other booleans as true/false."""
    return {name: _text(_value(value), name, use_case)
            for name, value in on_off(attributes).items()}


def enqueue(message: str, *, queue: str | None, workflow_sid: str | None = None,
            task: str | None = None, language: str | None = None) -> str:
    """``<Say>`` then ``<Enqueue>``: a TaskRouter/Flex workflow (with the handoff data as the
    ``<Task>``) when ``workflow_sid`` is set, else the named queue."""
    response = VoiceResponse()
    if message:
        _say(response, message, "handoff.message", language)
    queue = queue and _text(queue, "handoff.queue")
    if workflow_sid:
        element = response.enqueue(queue, workflow_sid=_text(workflow_sid,
                                                              "handoff.workflow_sid"))
        if task:
            element.task(task)
    else:
        response.enqueue(queue)
    return str(response)


def dial(message: str, number: str, language: str | None = None) -> str:
    """``<Say>`` then ``<Dial>`` the number (a person's phone or a front desk)."""
    response = VoiceResponse()
    if message:
        _say(response, message, "handoff.message", language)
    response.dial(_text(number, "handoff.number"))
    return str(response)
