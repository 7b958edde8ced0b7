"""The values Twilio documents for the ``<ConversationRelay>`` attributes that take one of a
few (``interruptible``, ``interruptSensitivity`` ...), on/off flags, and ranges, checked when a
use case file is loaded.

Why at load: the twilio builder writes whatever it is given, and Twilio reads the attributes
only when a call is answered, so a typo (``interruptible: speach``) reached every call to the
use case, found by a caller. What Twilio does with such a value is documented only for some
(an invalid provider and voice pair ends the call); the safe side is to send none.

Sources: Twilio's TwiML ``<ConversationRelay>`` reference
(https://www.twilio.com/docs/voice/twiml/connect/conversationrelay), its 1 Apr 2025 changelog
(``interruptible``'s booleans), and the installed builder's docstrings for the newer ones.
An attribute whose values are not documented is not checked here.
"""

from __future__ import annotations

import math

from voiceagent.look_alike import look_alike
from voiceagent.relay.outbound import Setting

_INPUTS = ("none", "dtmf", "speech", "any")
_ON_OFF = ("auto", "on", "off")

# Attributes that take one of a few words, spelled as Twilio documents them.
CHOICES: dict[str, tuple[str, ...]] = {
    "interruptible": _INPUTS,
    "welcomeGreetingInterruptible": _INPUTS,
    "reportInputDuringAgentSpeech": _INPUTS,
    "interruptSensitivity": ("low", "medium", "high"),
    "ttsTextNormalization": _ON_OFF,
    "elevenlabsTextNormalization": _ON_OFF,
}

# Of those, the ones a boolean is fine for: written as the word it stands for where the
# TwiML and messages are made (``ANY_NONE_ATTRIBUTES``, ``ON_OFF_ATTRIBUTES``), or documented
# as an alias (``interruptible``: true = any, false = none).
BOOLEAN_OK = frozenset(CHOICES) - {"interruptSensitivity"}

# A boolean as text (a quoted "true" in YAML, a JSON string): in TwiML it is the same
# attribute value as the boolean, so it is taken as that boolean wherever one is.
BOOLEAN_WORDS: dict[str, bool] = {"true": True, "false": False}

# ``reportInputDuringAgentSpeech`` was a boolean once; Twilio now documents only
# none/dtmf/speech/any for it (and the builder's docstring still says "Whether"). A boolean
# goes out as the documented word with the same meaning, so no call depends on Twilio still
# taking the old form.
ANY_NONE_ATTRIBUTES = frozenset({"reportInputDuringAgentSpeech"})

# On/off attributes: true or false (YAML's yes/no/on/off are read as those too)
FLAGS = frozenset({
    "dtmfDetection", "partialPrompts", "preemptible", "profanityFilter",
    "deepgramSmartFormat", "ignoreBackchannel", "partialPromptOnHangup", "asrSmartFormat",
    "ttsLanguageTextNormalization", "elevenlabsLanguageTextNormalization",
    "applicationReconnect", "echoPromptFiltering", "turnDetection"})

RANGES: dict[str, tuple[float, float]] = {"eagerEotThreshold": (0.3, 0.9)}

# On/off attributes this release cannot serve turned on, each with why and what it serves
# instead. ``applicationReconnect``: Twilio documents only that it connects to the same URL
# again and replays up to 500 buffered events (changelog, 28 Oct 2026; Studio, 4 Dec 2026),
# not the handshake (a second setup? the same sessionId?), so nothing here can tell its
# socket from a replayed one; each session token opens one socket, and Twilio's would be
# refused while the caller waits on it. Off, a drop fails the session at once and /action
# reconnects the call (docs/conversation-relay-2026.md).
NOT_SERVED: dict[str, str] = {
    "applicationReconnect": (
        "applicationReconnect: true is not served by this release: Twilio documents that it "
        "reconnects to the same URL and replays up to 500 buffered events, but not what that "
        "socket sends (a second setup? the same sessionId?), and each session token here "
        "opens one socket, so Twilio's reconnect would be refused while the caller waits in "
        "silence. Leave it out (or false): a dropped socket then fails the session at once "
        "and the /action callback reconnects the call, resuming the conversation from the "
        "store (see docs/conversation-relay-2026.md)"),
}


def value_problem(name: str, value: Setting) -> str | None:
    """What is wrong with ``value`` for the attribute ``name``, or None: also None for an
    attribute whose values Twilio does not document."""
    if name in CHOICES:
        if isinstance(value, bool) or (isinstance(value, str) and value in BOOLEAN_WORDS):
            return None if name in BOOLEAN_OK else _choose(name, value)
        return None if str(value) in CHOICES[name] else _choose(name, value)
    if name in FLAGS:
        if isinstance(value, bool) or (isinstance(value, str) and value in BOOLEAN_WORDS):
            return None
        return f"{name} is on or off: write true or false, not {value!r}"
    if name in RANGES:
        low, high = RANGES[name]
        number = _number(value)
        if number is None or not low <= number <= high:
            return f"{name} is a number from {low} to {high}, not {value!r}"
    return None


def not_served(name: str, value: Setting) -> str | None:
    """Why the server cannot serve ``value`` for the attribute ``name``, or None. Apart from
    ``value_problem``: the value is one Twilio documents, and the refusal is ours."""
    if name in NOT_SERVED and (value is True or value == "true"):
        return NOT_SERVED[name]
    return None


def _choose(name: str, value: Setting) -> str:
    allowed = CHOICES[name]
    close = look_alike(str(value), allowed, cutoff=0.6)
    hint = f" (did you mean {close}?)" if close else ""
    also = " or true/false" if name in BOOLEAN_OK else ""
    return (f"{name} takes one of {', '.join(allowed)}{also}, as Twilio documents it; "
            f"{value!r} would reach Twilio only when a call is answered{hint}")


def _number(value: Setting) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None
