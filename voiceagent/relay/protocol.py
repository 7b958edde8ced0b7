"""ConversationRelay messages: a strict parse of what Twilio sends, an encoder for what we send.

Field names and quirks follow ``shared/spec/conversation-relay.md``. Parsing never raises for
bad input: it returns a ``Rejected`` value carrying the reason, the frame's type (when it had
one) and its size, never its content, so the reader can count and log it and the call goes on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# ---------------------------------------------------------------- Twilio -> us


@dataclass(frozen=True, slots=True)
class Setup:
    session_id: str
    call_sid: str
    account_sid: str = ""
    from_number: str = ""
    to_number: str = ""
    call_status: str = ""            # lower-cased: "ringing", "in_progress", "active" (Telnyx)
    direction: str = ""
    caller_name: str = ""
    parent_call_sid: str = ""
    forwarded_from: str = ""
    call_type: str = ""
    custom_parameters: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Prompt:
    text: str                        # voicePrompt
    last: bool = True                # False = a cumulative partial (partialPrompts="true")
    lang: str = ""


@dataclass(frozen=True, slots=True)
class Dtmf:
    digit: str


@dataclass(frozen=True, slots=True)
class Interrupt:
    heard: str | None                # utteranceUntilInterrupt; None when Twilio left it out
    duration_ms: int | None = None   # durationUntilInterruptMs, coerced from int/float/str


@dataclass(frozen=True, slots=True)
class Info:
    name: str
    value: str
    ts: int | None = None


@dataclass(frozen=True, slots=True)
class RelayErrorReport:
    description: str                 # Twilio's "error" message: it rejected one of ours


Inbound = Setup | Prompt | Dtmf | Interrupt | Info | RelayErrorReport

RejectReason = Literal[
    "binary", "too_large", "bad_json", "not_object", "missing_type", "unknown_type", "bad_field"
]


@dataclass(frozen=True, slots=True)
class Rejected:
    """A frame we could not use. Carries no content: logs must not leak what the caller said."""

    reason: RejectReason
    frame_type: str | None
    size: int
    problem: str = ""               # which field and why, without values


# ---------------------------------------------------------------- us -> Twilio


@dataclass(frozen=True, slots=True)
class Text:
    token: str
    last: bool = False
    lang: str | None = None
    interruptible: bool | None = None
    preemptible: bool | None = None


@dataclass(frozen=True, slots=True)
class Play:
    source: str
    loop: int | None = None
    preemptible: bool | None = None
    interruptible: bool | None = None


@dataclass(frozen=True, slots=True)
class SendDigits:
    digits: str


@dataclass(frozen=True, slots=True)
class Language:
    tts_language: str | None = None
    transcription_language: str | None = None


@dataclass(frozen=True, slots=True)
class End:
    handoff_data: str | None = None  # a string on the wire: JSON-encode structured data first


Outbound = Text | Play | SendDigits | Language | End
