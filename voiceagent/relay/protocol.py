"""ConversationRelay messages: a strict parse of what Twilio sends (what we send, and its
encoder, are in ``outbound`` and re-exported here).

Field names and quirks follow Twilio's ConversationRelay WebSocket messages documentation
(https://www.twilio.com/docs/voice/conversationrelay/websocket-messages). Parsing never raises for
bad input: it returns a ``Rejected`` value carrying the reason, the frame's type (when it had
one) and its size, never its content, so the reader can count and log it and the call goes on.

Text leaves the parser as valid Unicode: JSON may carry lone surrogates (``"\\ud800"``), which
no UTF-8 encoder accepts, so storage, logs and the model would each fail on them somewhere far
from here. They become U+FFFD in every string a message carries.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from voiceagent import jsonlimits
from voiceagent.relay.outbound import (
    CONFIG_LANGUAGE_SETTINGS,
    CONFIG_SESSION_SETTINGS,
    Config,
    End,
    Hints,
    Language,
    Outbound,
    Play,
    SendDigits,
    Setting,
    Text,
    encode,
)

__all__ = ["CONFIG_LANGUAGE_SETTINGS", "CONFIG_SESSION_SETTINGS", "Config", "End", "Hints",
           "Language", "Outbound", "Play", "SendDigits", "Setting", "Text", "encode"]

MAX_FRAME_BYTES = 65536
MAX_FRAME_DEPTH = jsonlimits.MAX_DEPTH   # Twilio's frames nest two levels (customParameters)

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
    # descriptive fields (only logged) that were there but unusable, and so taken as absent:
    # a caller was lost for a number in ``callerName``. Those the call is bound and
    # authenticated by (``sessionId``, ``callSid``, ``customParameters``) stay strict.
    problem: str | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Prompt:
    text: str                        # voicePrompt
    last: bool = True                # False = a cumulative partial (partialPrompts="true")
    lang: str = ""
    # when the frame came off the socket (trio clock), stamped by the reader: application
    # latency counts from here, as Twilio's Voice Insights does
    received_at: float | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Dtmf:
    digit: str
    received_at: float | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Interrupt:
    heard: str | None                # utteranceUntilInterrupt; None when Twilio left it out
    duration_ms: int | None = None   # durationUntilInterruptMs, coerced from int/float/str
    # a field that was there but unusable, and so taken as absent: a barge-in is never
    # dropped for a detail of it (the reply would go on over the caller, recorded as heard)
    problem: str | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class SpeakerEvent:
    """``agentSpeaking`` / ``clientSpeaking`` (the ``speaker-events`` subscription)."""

    who: Literal["agent", "caller"]
    speaking: bool
    ts: int | None = None            # epoch ms, when Twilio gives it
    # ``ts`` there but unusable, and so taken as absent: nothing reads it, and the event
    # was lost for it (each info event type below carries the same field)
    problem: str | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class TokensPlayed:
    """``tokensPlayed``: text Twilio just finished speaking (``tokens-played``): the only live
    record of what the caller actually heard."""

    text: str
    ts: int | None = None
    problem: str | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class ConfigUpdated:
    """``configUpdated`` (``config-updated``): a configuration change took effect, ours or a
    provider failover. Its payload is not documented field by field, so it is kept as JSON
    text for the log."""

    detail: str
    ts: int | None = None
    problem: str | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Info:
    """Any other ``info`` event (``debugging`` output, names Twilio adds later)."""

    name: str
    value: str
    ts: int | None = None
    problem: str | None = field(default=None, compare=False)


InfoEvent = SpeakerEvent | TokensPlayed | ConfigUpdated | Info


@dataclass(frozen=True, slots=True)
class RelayErrorReport:
    description: str                 # Twilio's "error" message: it rejected one of ours


Inbound = Setup | Prompt | Dtmf | Interrupt | InfoEvent | RelayErrorReport

RejectReason = Literal[
    "binary", "too_large", "bad_json", "too_deep", "not_object", "missing_type", "unknown_type",
    "bad_field"
]


@dataclass(frozen=True, slots=True)
class Rejected:
    """A frame we could not use. Carries no content: logs must not leak what the caller said."""

    reason: RejectReason
    frame_type: str | None
    size: int
    problem: str = ""               # which field and why, without values



# ---------------------------------------------------------------- parsing


class _BadField(Exception):
    """Raised inside a parser only; ``parse_frame`` turns it into ``Rejected("bad_field")``."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


_Frame = dict[str, object]
T = TypeVar("T")

_LOGGABLE_TYPE = re.compile(r"[A-Za-z0-9_.:-]{1,40}")
_CALL_SID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_DTMF_DIGITS = frozenset("0123456789*#ABCD")  # A-D: Telnyx


def parse_frame(data: str | bytes, *, max_bytes: int = MAX_FRAME_BYTES) -> Inbound | Rejected:
    """Never raises on bad input, because one bad frame must not end the call.

    Known fields are checked strictly so a surprise shows up as a counted rejection rather
    than a wrong value deep in a turn, except where losing the frame costs more than the
    field is worth: an unusable field of an ``interrupt``, a descriptive one of ``setup``
    and an info event's ``ts`` are taken as absent, named in the message's ``problem``.
    Unknown fields are ignored because Twilio adds them often. JSON ``null`` in an optional
    field counts as absent, so a carrier that sends ``null`` instead of leaving a field out
    does not lose a whole frame.
    """
    if not isinstance(data, str):
        return Rejected("binary", None, len(data))
    size = len(data) if data.isascii() else len(data.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        return Rejected("too_large", None, size)
    try:
        # finite=False: a field checks its own number ("expected a finite number"), and a
        # NaN among Telnyx's customParameters is text to us, not a reason to lose the frame
        frame = jsonlimits.loads(data, max_depth=MAX_FRAME_DEPTH, finite=False)
    except jsonlimits.TooDeep:
        return Rejected("too_deep", None, size, f"nested deeper than {MAX_FRAME_DEPTH} levels")
    except ValueError:
        return Rejected("bad_json", None, size)
    if not isinstance(frame, dict):
        return Rejected("not_object", None, size)
    frame_type = frame.get("type")
    if not isinstance(frame_type, str):
        return Rejected("missing_type", None, size)
    parser = _PARSERS.get(frame_type)
    if parser is None:
        loggable = frame_type if _LOGGABLE_TYPE.fullmatch(frame_type) else "<unprintable>"
        return Rejected("unknown_type", loggable, size)
    try:
        return parser(frame)
    except _BadField as err:
        return Rejected("bad_field", frame_type, size, err.problem)


def describe(rejected: Rejected) -> str:
    """One log-safe line: Rejected holds no frame content, so neither does this."""
    line = f"reason={rejected.reason} type={rejected.frame_type or '-'} size={rejected.size}"
    return f"{line} problem={rejected.problem}" if rejected.problem else line


_SETUP_TEXT = {"account_sid": "accountSid", "from_number": "from", "to_number": "to",
               "call_status": "callStatus", "direction": "direction", "caller_name": "callerName",
               "parent_call_sid": "parentCallSid", "forwarded_from": "forwardedFrom",
               "call_type": "callType"}


def _parse_setup(frame: _Frame) -> Setup:
    session_id = _required_str(frame, "sessionId")
    call_sid = _required_str(frame, "callSid")
    if not _CALL_SID.fullmatch(call_sid):
        # unauthenticated until its token is checked, and a store key and every log line's
        # CallSid after: Twilio's are CA + 32 hex digits (Telnyx's: v3:... ids)
        raise _BadField("callSid: expected 1-128 letters, digits or _ . : -")
    custom_parameters = _custom_parameters(frame)      # the session token's: strict too
    problems: list[str] = []
    text = {name: _or_absent(problems, _optional_str, frame, key) or ""
            for name, key in _SETUP_TEXT.items()}
    text["call_status"] = text["call_status"].lower()  # Twilio IN_PROGRESS, Telnyx active
    return Setup(session_id=session_id, call_sid=call_sid, **text,
                 custom_parameters=custom_parameters, problem="; ".join(problems) or None)


def _parse_prompt(frame: _Frame) -> Prompt:
    last = frame.get("last")
    if last is not None and not isinstance(last, bool):
        raise _BadField(f"last: expected boolean, got {_json_type(last)}")
    return Prompt(
        text=_required_str(frame, "voicePrompt"),
        last=True if last is None else last,
        lang=_optional_str(frame, "lang") or "",
    )


def _parse_dtmf(frame: _Frame) -> Dtmf:
    digit = _required_str(frame, "digit")
    if len(digit) != 1 or digit not in _DTMF_DIGITS:
        raise _BadField("digit: expected one of 0-9 * # A-D")
    return Dtmf(digit)


def _parse_interrupt(frame: _Frame) -> Interrupt:
    problems: list[str] = []
    heard = _or_absent(problems, _optional_str, frame, "utteranceUntilInterrupt")
    duration_ms = _or_absent(problems, _optional_int, frame, "durationUntilInterruptMs")
    return Interrupt(heard, duration_ms, "; ".join(problems) or None)


def _or_absent(problems: list[str], parse: Callable[[_Frame, str], T | None], frame: _Frame,
               key: str) -> T | None:
    """The field as ``parse`` reads it, or None with its problem noted."""
    try:
        return parse(frame, key)
    except _BadField as err:
        problems.append(err.problem)
        return None


def _optional_ts(frame: _Frame) -> tuple[int | None, str | None]:
    """An info event's ``ts``, or None with why when it is there but unusable."""
    problems: list[str] = []
    ts = _or_absent(problems, _optional_int, frame, "ts")
    return ts, "; ".join(problems) or None


_SPEAKERS: dict[str, Literal["agent", "caller"]] = {"agentSpeaking": "agent",
                                                    "clientSpeaking": "caller"}


def _parse_info(frame: _Frame) -> InfoEvent:
    name = _required_str(frame, "name")
    value = _as_text("value", frame.get("value"))
    ts, problem = _optional_ts(frame)
    if name in _SPEAKERS:
        if value not in ("on", "off"):
            raise _BadField(f"value: {name} expects on or off")
        return SpeakerEvent(_SPEAKERS[name], value == "on", ts, problem)
    if name == "tokensPlayed":
        return TokensPlayed(value, ts, problem)
    if name == "configUpdated":
        return ConfigUpdated(value, ts, problem)
    return Info(name=name, value=value, ts=ts, problem=problem)


def _parse_config_updated(frame: _Frame) -> ConfigUpdated:
    """``configUpdated`` as a message type of its own. Twilio's changelog (28 Oct 2026) calls
    it "a new configUpdated outbound event" without saying whether it comes as an ``info``
    event or on its own; read either way, since as an unknown type each of our ``config``
    frames, and each provider failover, was a "frame rejected" warning and the change went
    unlogged. Its fields are not documented: all but ``type`` and ``ts`` are kept as JSON."""
    detail = {name: value for name, value in frame.items() if name not in ("type", "ts")}
    return ConfigUpdated(_as_text("configUpdated", detail), *_optional_ts(frame))


def _parse_error(frame: _Frame) -> RelayErrorReport:
    return RelayErrorReport(_required_str(frame, "description"))


_PARSERS: dict[str, Callable[[_Frame], Inbound]] = {
    "setup": _parse_setup, "prompt": _parse_prompt, "dtmf": _parse_dtmf,
    "interrupt": _parse_interrupt, "info": _parse_info, "error": _parse_error,
    "configUpdated": _parse_config_updated,
}


def _required_str(frame: _Frame, key: str) -> str:
    value = frame.get(key)
    if value is None:
        raise _BadField(f"{key}: missing")
    if not isinstance(value, str):
        raise _BadField(f"{key}: expected string, got {_json_type(value)}")
    return jsonlimits.valid_text(value)



def _optional_str(frame: _Frame, key: str) -> str | None:
    return None if frame.get(key) is None else _required_str(frame, key)


def _optional_int(frame: _Frame, key: str) -> int | None:
    """Twilio documents a number but has been seen sending "460"; Telnyx sends 460.7."""
    value = frame.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _BadField(f"{key}: expected number, got {_json_type(value)}")
    if isinstance(value, int):
        return value
    try:
        number = float(value)  # also takes " 460 ", "1_000", "inf"; isfinite drops the last
    except ValueError:
        raise _BadField(f"{key}: expected number, got non-numeric string") from None
    if not math.isfinite(number):
        raise _BadField(f"{key}: expected a finite number")
    return int(number)


def _custom_parameters(frame: _Frame) -> dict[str, str]:
    """Twilio sends strings; Telnyx may send any JSON value, kept as its JSON text."""
    params = frame.get("customParameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise _BadField(f"customParameters: expected object, got {_json_type(params)}")
    return {jsonlimits.valid_text(name): _as_text("customParameters", value)
            for name, value in params.items()}


def _as_text(key: str, value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return jsonlimits.valid_text(value)
    try:
        return jsonlimits.valid_text(json.dumps(value, separators=(",", ":"), ensure_ascii=False))
    except ValueError:
        raise _BadField(f"{key}: value cannot be represented as text") from None


_JSON_TYPES = {type(None): "null", bool: "boolean", int: "number", float: "number",
               str: "string", list: "array", dict: "object"}


def _json_type(value: object) -> str:
    """Named in problems instead of the value, which may be what the caller said."""
    return _JSON_TYPES.get(type(value), "value")

