"""ConversationRelay messages we send: the frozen values actors hand the relay writer, and
their one encoder. Twilio validates each message it receives and drops (with an ``error``) one
it cannot use, so every value checks Twilio's rules when it is made, where the mistake is.

Field names follow Twilio's ConversationRelay WebSocket messages documentation; see
docs/conversation-relay-2026.md for the messages whose layout is not yet confirmed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import assert_never
from urllib.parse import urlsplit

from voiceagent.jsonlimits import valid_text

# ---------------------------------------------------------------- us -> Twilio


@dataclass(frozen=True, slots=True)
class Text:
    token: str
    last: bool = False
    lang: str | None = None
    interruptible: bool | None = None
    preemptible: bool | None = None
    # No check on ``token``: "" with last=True is how a talk cycle is closed.


# Twilio documents no limit; every HTTP stack and CDN takes this much, and a longer one is
# more likely model output pasted into a URL than an address of an audio file
MAX_PLAY_SOURCE = 2048
MAX_PLAY_LOOP = 1000                # Twilio's maximum ("0 means 1000 times")


def play_source_problem(source: str) -> str | None:
    """What makes ``source`` a URL Twilio cannot fetch audio from, said after the field's
    name; None when it can. Twilio drops a ``play`` with a bad source (64107) with no word
    to us, and the caller hears nothing: a ``javascript:`` or ``file:`` URL, a relative path,
    a host left out."""
    if not source:
        return "must be a non-empty URL"
    if len(source) > MAX_PLAY_SOURCE:
        return (f"is {len(source)} characters; at most {MAX_PLAY_SOURCE}: the address of an "
                "audio file, not its content")
    # checked before urlsplit, which drops tabs and newlines without a word
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in source):
        return "must not hold spaces or control characters: percent-encode them (%20)"
    try:
        parts = urlsplit(source)
        _ = parts.port              # raises for a port out of range or not a number
    except ValueError:              # that, or a bracketed host left open ("http://[::1")
        return "is not a valid URL: check its host and port"
    if parts.scheme not in ("http", "https"):
        given = f"{parts.scheme[:20]}:" if parts.scheme else "a relative one"
        return (f"must be an absolute http:// or https:// URL Twilio can fetch the audio "
                f"from (like https://example.com/hold.mp3), not {given}")
    if not parts.hostname:
        return "must name a host, like https://example.com/hold.mp3"
    return None


@dataclass(frozen=True, slots=True)
class Play:
    source: str
    loop: int | None = None          # 0 means 1000 times, Twilio's maximum
    preemptible: bool | None = None
    interruptible: bool | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.source, str):
            raise TypeError(f"Play.source must be a URL string, not "
                            f"{type(self.source).__name__}")
        if (problem := play_source_problem(self.source)) is not None:
            raise ValueError(f"Play.source {problem}")
        # Twilio: 0 plays it 1000 times, "the maximum"; a larger count is a play it drops
        # (64107), and the caller hears nothing
        if self.loop is not None and not 0 <= self.loop <= MAX_PLAY_LOOP:
            raise ValueError(f"Play.loop must be >= 0 and at most {MAX_PLAY_LOOP} "
                             f"(0 means {MAX_PLAY_LOOP} times), not {self.loop}")


_SEND_DIGITS = re.compile(r"[0-9w#*]+")


@dataclass(frozen=True, slots=True)
class SendDigits:
    digits: str                      # the set both carriers accept; Telnyx's A-D/W are left out

    def __post_init__(self) -> None:
        if _SEND_DIGITS.fullmatch(self.digits) is None:
            raise ValueError("SendDigits.digits must be non-empty and only 0-9, w, # or *")


@dataclass(frozen=True, slots=True)
class Language:
    tts_language: str | None = None
    transcription_language: str | None = None

    def __post_init__(self) -> None:
        given = [v for v in (self.tts_language, self.transcription_language) if v is not None]
        if not given or not all(given):
            raise ValueError("Language needs tts_language and/or transcription_language, "
                             "and neither may be empty")


Setting = str | bool | int | float

# What Twilio's dynamic configuration may change mid-call (docs: "Update configuration during a
# call"); anything else stays as the TwiML set it, failover included.
CONFIG_SESSION_SETTINGS = frozenset({
    "interruptible", "preemptible", "dtmfDetection", "reportInputDuringAgentSpeech",
    "partialPrompts", "speechTimeout", "echoPromptFiltering", "interruptSensitivity",
    "ignoreBackchannel", "profanityFilter", "eotThreshold"})
# (per language: "the speech model, hints, transcription provider, voice, TTS provider, and
# text normalization"; smart formatting of transcripts is not among them)
CONFIG_LANGUAGE_SETTINGS = frozenset({
    "speechModel", "hints", "transcriptionProvider", "voice", "ttsProvider",
    "ttsTextNormalization", "ttsLanguageTextNormalization", "elevenlabsTextNormalization"})


@dataclass(frozen=True, slots=True)
class Config:
    """Change session settings, and one or more languages' settings, during the call. Names
    are the TwiML attribute names; each language entry names its ``code``."""

    settings: tuple[tuple[str, Setting], ...] = ()
    languages: tuple[tuple[tuple[str, Setting], ...], ...] = ()

    def __post_init__(self) -> None:
        if not self.settings and not self.languages:
            raise ValueError("Config needs at least one setting or language to change")
        unknown = sorted({k for k, _ in self.settings} - CONFIG_SESSION_SETTINGS)
        if unknown:
            raise ValueError(f"Config cannot change {unknown} mid-call; it can change "
                             f"{sorted(CONFIG_SESSION_SETTINGS)}")
        for entry in self.languages:
            names = {k for k, _ in entry}
            if "code" not in names:
                raise ValueError("each Config language needs its code")
            unknown = sorted(names - CONFIG_LANGUAGE_SETTINGS - {"code"})
            if unknown:
                raise ValueError(f"Config cannot change {unknown} of a language; it can "
                                 f"change {sorted(CONFIG_LANGUAGE_SETTINGS)}")

    @classmethod
    def of(cls, settings: dict[str, Setting] | None = None,
           languages: list[dict[str, Setting]] | None = None) -> Config:
        return cls(tuple(sorted((settings or {}).items())),
                   tuple(tuple(sorted(entry.items())) for entry in languages or ()))


@dataclass(frozen=True, slots=True)
class Hints:
    """Replace the speech recognition hints (phrases to favour), for ``language`` or for the
    active language."""

    phrases: tuple[str, ...]
    language: str | None = None

    def __post_init__(self) -> None:
        if not self.phrases or not all(p.strip() and "," not in p for p in self.phrases):
            raise ValueError("Hints needs phrases, none blank and none with a comma (the "
                             "wire form is comma-separated)")


@dataclass(frozen=True, slots=True)
class End:
    handoff_data: str | None = None  # a string on the wire: JSON-encode structured data first

    def __post_init__(self) -> None:
        # A dict went out as a JSON object: Twilio drops that `end` (64107) and the session
        # goes on, while the writer, having taken `end`, sends nothing more: the caller sat
        # in silence until we closed the socket, and the handoff came back as a failure.
        if self.handoff_data is not None and not isinstance(self.handoff_data, str):
            raise TypeError(f"End.handoff_data must be a string, not "
                            f"{type(self.handoff_data).__name__}: JSON-encode structured "
                            "data first (json.dumps)")


Outbound = Text | Play | SendDigits | Language | Config | Hints | End


# ---------------------------------------------------------------- encoding

# one encoder for every frame: json.dumps with options builds one a call (two Python frames
# more per frame sent, on the path every token takes)
_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def encode(message: Outbound) -> str:
    """Optional fields are left out when None, so Twilio's own defaults (and TwiML) apply.

    A lone surrogate (a model's or a tool's text, decoded from a JSON escape whose other half
    never came) becomes U+FFFD: the socket encodes the frame as UTF-8, which cannot hold one,
    and its failed send reads as the peer gone, leaving the caller in silence."""
    match message:
        case Text(token=token, last=last, lang=lang, interruptible=interruptible,
                  preemptible=preemptible):
            # built here, not by ``_frame``: every token's frame is one (two calls less)
            body = {"type": "text", "token": token, "last": last}
            if lang is not None:
                body["lang"] = lang
            if interruptible is not None:
                body["interruptible"] = interruptible
            if preemptible is not None:
                body["preemptible"] = preemptible
        case Play():
            body = _frame("play", source=message.source, loop=message.loop,
                          preemptible=message.preemptible, interruptible=message.interruptible)
        case SendDigits():
            body = _frame("sendDigits", digits=message.digits)
        case Language():
            body = _frame("language", ttsLanguage=message.tts_language,
                          transcriptionLanguage=message.transcription_language)
        case Config():
            # The envelope mirrors the TwiML: session attributes at the top, one entry per
            # <Language>. Twilio's page lists what may change; its field layout is read from
            # there (see docs/conversation-relay-2026.md).
            body = _frame("config", **dict(message.settings),
                          languages=[dict(entry) for entry in message.languages] or None)
        case Hints():
            body = _frame("hints", hints=",".join(message.phrases), language=message.language)
        case End():
            body = _frame("end", handoffData=message.handoff_data)
        case _:
            assert_never(message)
    frame = _JSON.encode(body)
    return frame if frame.isascii() else valid_text(frame)   # ASCII holds no surrogate


def _frame(frame_type: str, **fields: object) -> dict[str, object]:
    return {"type": frame_type} | {k: v for k, v in fields.items() if v is not None}
