"""The ConversationRelay part of a use case: which TwiML attributes exist (read from the
installed twilio builder), ``<Language>`` entries with their failover, and reply controls
(the ``relay_updates`` rules that change the session mid-call: ``usecase_relay_updates``).

Split from ``usecases`` so each stays readable; ``usecases`` re-exports what callers use.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping
from importlib.metadata import version
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)
from twilio.twiml import lower_camel
from twilio.twiml.voice_response import Connect, ConversationRelay

from voiceagent.look_alike import look_alike
from voiceagent.relay.protocol import Setting
from voiceagent.relay_values import (
    ANY_NONE_ATTRIBUTES,
    BOOLEAN_OK,
    BOOLEAN_WORDS,
    FLAGS,
    not_served,
    value_problem,
)
from voiceagent.usecase_base import KEY_PROBLEM as KEY_PROBLEM
from voiceagent.usecase_base import Strict as Strict
from voiceagent.usecase_base import key_problem as key_problem
from voiceagent.usecase_lines import SpokenLines, filler_ok, hold_line_ok, said_instead_ok

RELAY_EXTRA_NAME = re.compile(r"^[a-z][A-Za-z0-9]*$")


# ------------------------------------------------------------------ TwiML attribute names


def _builder_names(method: Callable[..., Any], *, leave_out: str = "") -> frozenset[str]:
    """The TwiML spelling of each named parameter of a twilio builder method: the builder
    passes each through ``lower_camel``, which keeps camelCase names (``speechTimeout``)."""
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return frozenset(str(lower_camel(p.name))
                     for p in inspect.signature(method).parameters.values()
                     if p.kind in named and p.name not in ("self", leave_out))


# What ``relay:`` and ``languages:`` accept is what the installed builder names, so a twilio
# upgrade that adds an attribute makes it usable here without a change of ours. Twilio ends a
# call at setup on some bad attributes, so anything else is a typo until shown otherwise;
# ``relay_extra`` takes the ones Twilio documents before the builder names them.
TWILIO_VERSION = version("twilio")
RELAY_BUILDER_ATTRIBUTES = _builder_names(Connect.conversation_relay, leave_out="url")
LANGUAGE_BUILDER_ATTRIBUTES = _builder_names(ConversationRelay.language)
RELAY_SOURCE = ("attributes the installed twilio package's ConversationRelay builder names "
                 f"(twilio {TWILIO_VERSION}, Connect.conversation_relay), spelled as in TwiML")
LANGUAGE_SOURCE = ("attributes the installed twilio package's ConversationRelay builder "
                    f"names for <Language> (twilio {TWILIO_VERSION}, "
                    "ConversationRelay.language), spelled as in TwiML")

# A backup is "the backup provider, voice, and model for each language" (Twilio, Provider
# failover for Conversation Relay): nothing else of a <Language> goes inside <Failover>.
# the keys of a ``languages`` entry that are not <Language> attributes
# said while the language is spoken, not TwiML (``usecase_lines``)
WORDS = ("lines", "hold_line", "fillers", "handoff_message", "scripted_fallback", "dtmf_replies")
NOT_ATTRIBUTES = ("failover", *WORDS)
FAILOVER_ATTRIBUTES = frozenset({"ttsProvider", "voice", "transcriptionProvider", "speechModel"})
FAILOVER_SOURCE = ("backup provider, voice and model attributes Twilio documents for "
                   "<Failover> (ttsProvider, voice, transcriptionProvider, speechModel)")

# Attributes whose values are auto/on/off (Twilio; the builder's docstrings). YAML reads an
# unquoted on/off as true/false, which would go out as "true"/"false", values Twilio does not
# document for them; a boolean is written as the on/off it was typed as.
ON_OFF_ATTRIBUTES = frozenset({"ttsTextNormalization", "elevenlabsTextNormalization"})

# Attributes whose value is text in Twilio's docs (ConversationRelay and <Language> attributes):
# true/false there is YAML 1.1 reading an unquoted no (Norwegian), yes, on or off, and went
# out as "false" (a language Twilio has not heard of) where a file said language: no.
TEXT_ATTRIBUTES = frozenset({
    "language", "ttsLanguage", "transcriptionLanguage", "code", "voice", "ttsProvider",
    "transcriptionProvider", "speechModel", "welcomeGreeting", "hints", "debug", "events",
    "intelligenceService", "customerName", "interruptSensitivity", "includeInPrompt"})

# The validation context of a use case read back from the table: an older release stored
# it, and a check added since (``stored``) must not make an upgrade drop it for the sample
# attributes (its handoff, DTMF and model settings lost): it is served as it was, while
# ``config load`` refuses the same file.
STORED: Mapping[str, Any] = {"stored": True}


def stored(info: ValidationInfo) -> bool:
    return isinstance(info.context, Mapping) and bool(info.context.get("stored"))


# the attributes whose "true"/"false" written as text is the boolean (``_spelled``)
_BOOLEAN_NAMES = BOOLEAN_OK | FLAGS


def on_off(attributes: Mapping[str, Setting]) -> dict[str, Setting]:
    """``attributes`` as Twilio spells them: a boolean (or "true"/"false" as text) of an
    auto/on/off attribute is "on" or "off", of a none/dtmf/speech/any one "any" or "none", of
    any other that takes one a boolean. Applied where TwiML and messages are made, so stored
    items stay as they were."""
    return {name: _spelled(name, value) for name, value in attributes.items()}


def _spelled(name: str, value: Setting) -> Setting:
    if isinstance(value, str) and value in BOOLEAN_WORDS and name in _BOOLEAN_NAMES:
        # a quoted "true" is the boolean: the same TwiML, and the same ``config`` frame
        value = BOOLEAN_WORDS[value]
    if not isinstance(value, bool):
        return value
    if name in ON_OFF_ATTRIBUTES:
        return "on" if value else "off"
    if name in ANY_NONE_ATTRIBUTES:
        return "any" if value else "none"
    return value


def _did_you_mean(name: str, allowed: frozenset[str]) -> str | None:
    if lower_camel(name) in allowed:           # welcome_greeting: the Python spelling
        return str(lower_camel(name))
    return look_alike(name, allowed, cutoff=0.6)


def unknown_attribute(name: str, allowed: frozenset[str], what: str, source: str) -> str:
    guess = _did_you_mean(name, allowed)
    hint = f" (did you mean {guess}?)" if guess else ""
    return f"unknown {what} attribute {name!r}{hint}; allowed are the {source}"


def _unknown_entry_key(name: str) -> str:
    """A ``languages`` entry's key that is neither its own (``handoff_message``, ...) nor a
    <Language> attribute: the nearest of both is suggested, since a misspelt
    ``handoff_mesage`` was told only of the builder's attributes, none of them alike."""
    guess = _did_you_mean(name, LANGUAGE_BUILDER_ATTRIBUTES | frozenset(NOT_ATTRIBUTES))
    if guess not in NOT_ATTRIBUTES:
        return unknown_attribute(name, LANGUAGE_BUILDER_ATTRIBUTES, "<Language>",
                                 LANGUAGE_SOURCE)
    return (f"unknown key {name!r} (did you mean {guess}?); besides code and the <Language> "
            f"attributes, an entry takes {', '.join(NOT_ATTRIBUTES)} (config/README.md, "
            "Spoken lines)")


def quote_it(value: bool, key: str | None = None) -> str:
    """What to do when YAML made a boolean of what was meant as text."""
    words, example = ("yes, on or true", "yes") if value else ("no, off or false", "no")
    shown = f'{key}: "{example}"' if key else f'"{example}"'
    return (f"YAML reads an unquoted {words} as the boolean {str(value).lower()}: quote it "
            f"as you wrote it, e.g. {shown}")


def _scalar(value: Any) -> Any:
    if not isinstance(value, str | bool | int | float):
        raise ValueError("must be a string, a number or true/false")
    return value


SettingValue = Annotated[Setting, BeforeValidator(_scalar)]


def hints_joined(data: Any) -> Any:
    """``data`` (attributes by TwiML name) with ``hints`` given as a list, as in a relay
    update, written as TwiML takes it: one comma-separated string."""
    phrases = data.get("hints") if isinstance(data, Mapping) else None
    if not isinstance(phrases, list | tuple):
        return data
    if not phrases:
        raise key_problem(("hints",), "no hints listed: list phrases, or leave hints out")
    for index, phrase in enumerate(phrases):
        if isinstance(phrase, bool):
            problem = "each hint is text; " + quote_it(phrase)
        elif not isinstance(phrase, str):
            problem = f'each hint is text; quote it as you wrote it ("{phrase}")'
        elif not phrase.strip():
            problem = "a blank hint: remove it"
        elif "," in phrase:
            problem = ("TwiML separates hints with commas, so a hint cannot hold one: make "
                       f"{phrase!r} two hints")
        else:
            continue
        raise key_problem(("hints", index), problem)
    return {**data, "hints": ",".join(phrases)}


def _text_not_bool(value: dict[str, Setting], info: ValidationInfo) -> dict[str, Setting]:
    """Also the values Twilio documents, and the ones this release does not serve
    (``relay_values``): an attribute Twilio cannot use, or one that would strand the caller,
    is found at load, not by the callers of every call."""
    if not stored(info):                # an older release stored it: served as it was
        for name, setting in value.items():
            if (problem := value_problem(name, setting) or not_served(name, setting)):
                raise key_problem((name,), problem)
            if name in TEXT_ATTRIBUTES and isinstance(setting, bool):
                raise key_problem((name,), f"{name} takes text, not true/false; "
                                   + quote_it(setting, name))
    return value


# A map of TwiML attributes (or of a config message's settings) as a file writes them
Attributes = Annotated[dict[str, SettingValue], BeforeValidator(hints_joined),
                       AfterValidator(_text_not_bool)]


def regex_ok(value: str) -> str:
    try:
        re.compile(value)
    except re.error as err:
        raise ValueError(f"not a valid regular expression: {err}") from None
    return value


class ReplyControls(Strict):
    """``interruptible`` / ``preemptible`` on the text frames of one spoken reply (None: as
    the TwiML set them). On a tool: the model's reply after that tool runs, so an order
    confirmation can be made one the caller cannot talk over."""

    interruptible: bool | None = None
    preemptible: bool | None = None

    @model_validator(mode="after")
    def _something_set(self) -> ReplyControls:
        if self.interruptible is None and self.preemptible is None:
            raise key_problem((), "set interruptible and/or preemptible (true or false)")
        return self


class LanguageEntry(BaseModel):
    """One ``<Language>`` child: ``code`` plus any attribute the builder's ``language()``
    names, spelled as in TwiML (``voice``, ``ttsProvider``, ``speechModel``, ``hints`` ...),
    and an optional ``failover``: this language's backup providers, rendered inside the one
    ``<Failover>`` child. The attributes are kept as pydantic extras so the names allowed
    follow the installed builder; read them with ``attributes()``."""

    model_config = ConfigDict(extra="allow", frozen=True)
    __pydantic_extra__: dict[str, SettingValue] = Field(init=False)

    code: str = Field(min_length=1)
    failover: Attributes | None = None
    # said while this language is spoken (not TwiML), each in place of the use case's own:
    # see ``usecase_lines`` (fillers by tool name, dtmf_replies by keys)
    lines: SpokenLines | None = None
    hold_line: str | None = None
    fillers: dict[str, str] | None = None
    handoff_message: str | None = None
    scripted_fallback: str | None = None
    dtmf_replies: dict[str, str] | None = None

    @model_validator(mode="before")
    @classmethod
    def _names_known(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            for key in data:
                if key not in NOT_ATTRIBUTES and key not in LANGUAGE_BUILDER_ATTRIBUTES:
                    raise key_problem((str(key),), _unknown_entry_key(str(key)))
        return hints_joined(data)

    @model_validator(mode="after")
    def _text_ok(self, info: ValidationInfo) -> LanguageEntry:
        _text_not_bool(self.model_extra or {}, info)
        return self

    @field_validator("failover")
    @classmethod
    def _failover_known(cls, value: dict[str, Setting] | None) -> dict[str, Setting] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("failover needs at least one attribute (leave it out for "
                             "Twilio's default backup)")
        for key in value:
            if key not in FAILOVER_ATTRIBUTES:
                raise key_problem((key,), unknown_attribute(
                    key, FAILOVER_ATTRIBUTES, "<Failover> <Language>", FAILOVER_SOURCE))
        return value

    @field_validator("hold_line")
    @classmethod
    def _hold_line_ok(cls, value: str | None) -> str | None:
        return hold_line_ok(value)

    @field_validator("fillers")
    @classmethod
    def _fillers_ok(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("fillers needs at least one tool (leave it out for the tools' "
                             "own fillers)")
        return {name: str(filler_ok(text, (name,))) for name, text in value.items()}

    @field_validator("handoff_message", "scripted_fallback", "dtmf_replies")
    @classmethod
    def _said_instead_ok(cls, value: Any, info: ValidationInfo) -> Any:
        return said_instead_ok(str(info.field_name), value)

    @model_serializer(mode="wrap")
    def _without_unset_lines(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """No key of ``WORDS`` when unset: a release from before them refuses an entry with
        a key it does not know, and with it the whole stored use case."""
        data: dict[str, Any] = handler(self)
        for key in WORDS:
            if getattr(self, key) is None:
                data.pop(key, None)
        return data

    def attributes(self) -> dict[str, Setting]:
        """The ``<Language>`` element's attributes by TwiML name, ``code`` first."""
        return {"code": self.code, **(self.model_extra or {})}

    def failover_attributes(self) -> dict[str, Setting] | None:
        """The attributes of this language's ``<Language>`` inside ``<Failover>``, ``code``
        first; None when it declares no failover."""
        if self.failover is None:
            return None
        return {"code": self.code, **self.failover}
