"""The use-case schema: what a use case and a caller profile may say, checked strictly.

A use case is everything that makes one agent differ from another: persona prompt, model,
tools, DTMF handlers, ConversationRelay attributes and (for offline runs) scripted replies.
An unknown key or a wrong type is a validation error naming the key path (``usecase_loading``
adds the file), so a typo fails at load time rather than on a live call. A use case read back
from the store (context ``STORED``) skips the checks added since it was written.
"""

from __future__ import annotations

import re
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from voiceagent.relay.protocol import Setting
from voiceagent.usecase_handoff import HandoffConfig
from voiceagent.usecase_lines import MAX_FILLER_CHARS as MAX_FILLER_CHARS
from voiceagent.usecase_lines import SpokenLines, filler_ok, hold_line_ok
from voiceagent.usecase_model import (
    InferenceSettings,
    ModelOptionSettings,
    check_effort,
    check_samplers,
    check_thinking,
)
from voiceagent.usecase_relay import (
    RELAY_BUILDER_ATTRIBUTES,
    RELAY_EXTRA_NAME,
    RELAY_SOURCE,
    Attributes,
    LanguageEntry,
    ReplyControls,
    Strict,
    key_problem,
    stored,
    unknown_attribute,
)
from voiceagent.usecase_relay_updates import RelayUpdate
from voiceagent.usecase_scripted import ScriptedConfig as ScriptedConfig
from voiceagent.usecase_scripted import ScriptedRule as ScriptedRule
from voiceagent.usecase_scripted import ScriptedToolStep as ScriptedToolStep
from voiceagent.usecase_scripted import ThenCase as ThenCase
from voiceagent.usecase_xml import twiml_text_problem

E164 = re.compile(r"^\+[1-9]\d{6,14}$")
TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
# the longest a tool may take, in the use case or in its @tool: one that hangs past it holds
# the turn, and a side-effect tool, which runs on after the caller hangs up, the call itself
MAX_TOOL_TIMEOUT_S = 120.0
class ToolDeclaration(Strict):
    """A tool the model may call: Bedrock's toolSpec, with the schema checked on every call.
    ``filler``: said to the caller while the tool runs, when it is still running a moment
    after the model called it without a word first (``actors.tool_filler``)."""

    name: str
    description: str = Field(min_length=1)
    input_schema: dict[str, Any] = Field(default_factory=lambda: {"type": "object",
                                                                  "properties": {}})
    timeout_s: float | None = Field(default=None, gt=0, le=MAX_TOOL_TIMEOUT_S)
    reply: ReplyControls | None = None
    filler: str | None = None

    @field_validator("name")
    @classmethod
    def _name_ok(cls, value: str) -> str:
        if not TOOL_NAME.match(value):
            raise ValueError("tool names are 1-64 of a-z A-Z 0-9 _ - (Bedrock's rule)")
        return value

    @field_validator("filler")
    @classmethod
    def _filler_ok(cls, value: str | None) -> str | None:
        return filler_ok(value)

    @model_serializer(mode="wrap")
    def _without_an_unset_filler(self, handler: SerializerFunctionWrapHandler
                                 ) -> dict[str, Any]:
        """No ``filler`` key when none is set: a release from before fillers (a rolling
        deploy, a rollback) reads the stored item as it always did, where a ``filler: null``
        made its strict schema refuse the item's whole ``voiceagent`` attribute."""
        data: dict[str, Any] = handler(self)
        if self.filler is None:
            data.pop("filler", None)
        return data

    def tool_spec(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description,
                "inputSchema": {"json": self.input_schema}}


class DtmfHandler(Strict):
    """What one key (or a buffered entry) does. ``reply`` is spoken, with ``interruptible`` /
    ``preemptible`` on its frames when set; ``tool`` runs a tool; ``to_model`` hands the keys
    to the model as caller input. At least one must be set."""

    reply: str | None = None
    tool: str | None = None
    input: dict[str, Any] = Field(default_factory=dict)
    to_model: bool = False
    interruptible: bool | None = None
    preemptible: bool | None = None

    @model_validator(mode="after")
    def _flags_need_reply(self, info: ValidationInfo) -> DtmfHandler:
        new_check = not stored(info)
        if new_check and self.reply is None and self.tool is None and not self.to_model:
            raise key_problem((), "a handler needs reply, tool and/or to_model: true")
        if new_check and self.input and self.tool is None:
            raise key_problem(("input",), "input is the tool's input; set tool")
        if self.reply is None and (self.interruptible is not None
                                   or self.preemptible is not None):
            raise key_problem((), "interruptible and preemptible apply to reply; set reply")
        return self


class DtmfConfig(Strict):
    """Keys with a handler act at once; other keys collect into an entry (an order number)
    that ends with the terminator, ``max_digits`` or ``idle_timeout_s`` of silence."""

    handlers: dict[str, DtmfHandler] = Field(default_factory=dict)
    terminator: str = "#"              # ends a multi-digit entry
    idle_timeout_s: float = Field(default=2.0, gt=0, le=30)
    max_digits: int = Field(default=12, ge=1, le=64)
    default_to_model: bool = True      # keys without a handler go to the model

    @field_validator("terminator")
    @classmethod
    def _one_key(cls, value: str, info: ValidationInfo) -> str:
        """Else an entry could only end by its timeout or length."""
        if not stored(info) and (len(value) != 1 or value not in "0123456789*#"):
            raise key_problem((), f"{value!r} is not one key: use one of 0-9, * or #")
        return value


class UseCase(Strict):
    name: str = Field(min_length=1)
    title: str = ""
    description: str = ""
    prompt: str = Field(min_length=1)
    model: str | None = None
    time_zone: str | None = None
    inference: InferenceSettings = Field(default_factory=lambda: InferenceSettings())
    model_options: ModelOptionSettings = Field(default_factory=lambda: ModelOptionSettings())
    relay: Attributes = Field(default_factory=dict)
    relay_extra: Attributes = Field(default_factory=dict)
    languages: tuple[LanguageEntry, ...] = ()
    auto_language: bool | None = None
    relay_updates: tuple[RelayUpdate, ...] = ()
    tools: tuple[ToolDeclaration, ...] = ()
    dtmf: DtmfConfig = Field(default_factory=DtmfConfig)
    handoff: HandoffConfig = Field(default_factory=HandoffConfig)
    scripted: ScriptedConfig = Field(default_factory=ScriptedConfig)
    # said once in a turn when the model has not begun to answer a moment after it was asked
    # (``actors.hold_line``)
    hold_line: str | None = None
    # its words for voiceagent's own lines, in every language (``usecase_lines``)
    lines: SpokenLines | None = None

    @field_validator("relay")
    @classmethod
    def _relay_known(cls, value: dict[str, Setting]) -> dict[str, Setting]:
        for key in value:
            if key not in RELAY_BUILDER_ATTRIBUTES:
                problem = unknown_attribute(key, RELAY_BUILDER_ATTRIBUTES,
                                             "ConversationRelay", RELAY_SOURCE)
                raise key_problem((key,), problem + "; put an attribute Twilio documents "
                                   "that the builder does not name yet under relay_extra")
        return value

    @field_validator("relay_extra")
    @classmethod
    def _extra_not_builder_named(cls, value: dict[str, Setting]) -> dict[str, Setting]:
        for key in value:
            if key in RELAY_BUILDER_ATTRIBUTES:
                problem = f"the installed twilio builder names {key}: put {key} under relay:"
            elif key == "url":
                problem = "url is the relay socket's address, which the server sets"
            elif not RELAY_EXTRA_NAME.match(key):
                problem = ("not a TwiML attribute name: lowerCamelCase letters and digits, "
                           "spelled as in Twilio's docs (e.g. eotThreshold)")
            else:
                continue
            raise key_problem((key,), problem)
        return value

    @field_validator("hold_line")
    @classmethod
    def _hold_line_ok(cls, value: str | None) -> str | None:
        return hold_line_ok(value)

    @model_serializer(mode="wrap")
    def _without_unset_lines(self, handler: SerializerFunctionWrapHandler
                                    ) -> dict[str, Any]:
        """No ``hold_line`` key when none is set: a release from before hold lines reads the
        stored item strictly, and ``hold_line: null`` would make it refuse the whole use
        case (as with a tool's ``filler``)."""
        data: dict[str, Any] = handler(self)
        if self.hold_line is None:
            data.pop("hold_line", None)
        if self.lines is None:          # the same for ``lines``, which came later still
            data.pop("lines", None)
        return data

    @field_validator("time_zone")
    @classmethod
    def _zone_ok(cls, value: str | None) -> str | None:
        if value is not None:
            zone_named(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> UseCase:
        seen: set[str] = set()
        for i, entry in enumerate(self.languages):
            if entry.code.lower() in seen:
                raise key_problem(("languages", i, "code"),
                                   f"language {entry.code} is declared twice")
            seen.add(entry.code.lower())
        if self.auto_language and not self.languages:
            raise key_problem(("auto_language",), "auto_language switches among the "
                               "languages declared under languages; declare them")
        declared: set[str] = set()
        for i, declaration in enumerate(self.tools):
            if declaration.name in declared:       # Bedrock refuses repeated tool names
                raise key_problem(("tools", i, "name"),
                                   f"tool {declaration.name} is declared twice")
            declared.add(declaration.name)
        for i, entry in enumerate(self.languages):
            for name in entry.fillers or {}:
                if name not in declared:
                    raise key_problem(("languages", i, "fillers", name),
                                       f"tool {name!r} is not declared in this use case's "
                                       f"tools; declared: {sorted(declared)}")
        replied = sorted(keys for keys, h in self.dtmf.handlers.items() if h.reply is not None)
        for i, entry in enumerate(self.languages):
            for keys in entry.dtmf_replies or {}:
                if keys not in replied:
                    raise key_problem(("languages", i, "dtmf_replies", keys),
                                       f"keys {keys!r} have no handler with a reply in this "
                                       f"use case's dtmf.handlers; with a reply: {replied}")
        for i, rule in enumerate(self.relay_updates):
            if rule.when.tool is not None and rule.when.tool not in declared:
                raise key_problem(("relay_updates", i, "when", "tool"),
                                   f"tool {rule.when.tool!r} is not declared in this use "
                                   f"case's tools; declared: {sorted(declared)}")
        return self

    @model_validator(mode="after")
    def _file_checks(self, info: ValidationInfo) -> UseCase:
        if stored(info):                    # a stored one is served as it was
            return self
        check_samplers(self.model, self.inference)
        check_thinking(self.model, self.inference, self.model_options,
                       {keys: h.tool for keys, h in self.dtmf.handlers.items() if h.tool})
        check_effort(self.model, self.model_options)
        if (problem := twiml_text_problem(self)) is not None:
            raise key_problem(*problem)
        return self

    @property
    def welcome_greeting(self) -> str | None:
        greeting = self.relay.get("welcomeGreeting")
        return str(greeting) if greeting else None

    @property
    def auto_language_enabled(self) -> bool:
        """Whether to answer in the language the caller speaks: ``auto_language`` when set,
        else whether the use case declares more than one language."""
        if self.auto_language is not None:
            return self.auto_language
        return len(self.languages) > 1

    def language_for(self, lang: str) -> LanguageEntry | None:
        """The declared language for ``lang``: the entry whose code equals it (case aside),
        else the first with the same primary subtag (Twilio's ``multi`` transcription
        reports only ``es``), else None."""
        if not lang:
            return None
        wanted = lang.lower()
        exact = next((e for e in self.languages if e.code.lower() == wanted), None)
        if exact is not None:
            return exact
        primary = _primary_subtag(wanted)
        return next((e for e in self.languages if _primary_subtag(e.code) == primary), None)

    def tool(self, name: str) -> ToolDeclaration | None:
        return next((t for t in self.tools if t.name == name), None)

    def tool_specs(self) -> tuple[dict[str, Any], ...]:
        return tuple(t.tool_spec() for t in self.tools)


def _primary_subtag(code: str) -> str:
    return code.replace("_", "-").split("-", 1)[0].lower()


UseCase.model_rebuild()


class Profile(Strict):
    phone: str
    first_name: str = ""
    last_name: str = ""
    email: str = ""
    use_case: str | None = None

    @field_validator("phone")
    @classmethod
    def _e164(cls, value: str) -> str:
        if not E164.match(value):
            raise ValueError("must be an E.164 number such as +14155550100")
        return value


class ProfilesFile(Strict):
    profiles: tuple[Profile, ...] = ()


def zone_named(name: str) -> ZoneInfo:
    """The time zone, or a ValueError that says what to write instead (an IANA name)."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}; use an IANA name such as "
                         "America/Los_Angeles") from None
