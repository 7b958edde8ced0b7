"""A use case's ``relay_updates``: rules that change the ConversationRelay session mid-call,
each checked at load by building the protocol message it becomes.

Split from ``usecase_relay`` (which says which TwiML attributes exist) so each stays
readable; ``usecases`` re-exports what callers use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import Field, field_validator, model_validator

from voiceagent.relay.protocol import Config, Hints, Setting
from voiceagent.usecase_relay import Attributes, Strict, key_problem, on_off, regex_ok


class RelayTrigger(Strict):
    """When a ``relay_updates`` rule fires: exactly one of ``tool`` (before that tool runs),
    ``caller_says`` (a regex searched, case-insensitively, in a final caller prompt) and
    ``agent_says`` (the same, in a finished agent reply)."""

    tool: str | None = None
    caller_says: str | None = Field(default=None, min_length=1)
    agent_says: str | None = Field(default=None, min_length=1)

    @field_validator("caller_says", "agent_says")
    @classmethod
    def _regex_ok(cls, value: str | None) -> str | None:
        return value if value is None else regex_ok(value)

    @model_validator(mode="after")
    def _exactly_one(self) -> RelayTrigger:
        given = [v for v in (self.tool, self.caller_says, self.agent_says) if v is not None]
        if len(given) != 1:
            raise key_problem((), "when needs exactly one of tool, caller_says, agent_says "
                               f"(got {len(given)})")
        return self


class RelayUpdate(Strict):
    """A rule that changes the ConversationRelay session mid-call: ``config`` (session
    settings), ``languages`` (per-language settings, each with its ``code``) and ``hints``
    (phrases for speech recognition, replacing the current ones). Each is checked at load by
    building the protocol message it becomes."""

    when: RelayTrigger
    config: Attributes | None = None
    languages: tuple[Attributes, ...] | None = None
    hints: tuple[str, ...] | None = None
    hints_language: str | None = Field(default=None, min_length=1)
    once: bool = True                  # fire at most once per call

    @field_validator("config")
    @classmethod
    def _config_ok(cls, value: dict[str, Setting] | None) -> dict[str, Setting] | None:
        return value if value is None else _built(lambda: Config.of(settings=value), value)

    @field_validator("languages")
    @classmethod
    def _languages_ok(cls, value: tuple[dict[str, Setting], ...] | None,
                      ) -> tuple[dict[str, Setting], ...] | None:
        if value is None:
            return None
        return _built(lambda: Config.of(languages=[dict(entry) for entry in value]), value)

    @field_validator("hints", mode="before")
    @classmethod
    def _hints_split(cls, value: Any) -> Any:
        """Comma-separated, as ``relay.hints`` takes them (a space after a comma is not part
        of the phrase), or a list."""
        return tuple(part.strip() for part in value.split(",")) if isinstance(value, str) \
            else value

    @field_validator("hints")
    @classmethod
    def _hints_ok(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return value if value is None else _built(lambda: Hints(value), value)

    @model_validator(mode="after")
    def _acts(self) -> RelayUpdate:
        if self.config is None and self.languages is None and self.hints is None:
            raise key_problem((), "a relay update needs config, languages and/or hints")
        if self.hints_language is not None and self.hints is None:
            raise key_problem(("hints_language",), "hints_language names the language of "
                               "hints; set hints too")
        return self

    def messages(self) -> tuple[Config | Hints, ...]:
        """What to send when the rule fires: one ``config`` (session settings and languages
        together), then ``hints``."""
        messages: list[Config | Hints] = []
        if self.config is not None or self.languages is not None:
            messages.append(Config.of(on_off(self.config or {}),
                                      [on_off(entry) for entry in self.languages or ()]))
        if self.hints is not None:
            messages.append(Hints(self.hints, self.hints_language))
        return tuple(messages)


V = TypeVar("V")


def _built(build: Callable[[], object], value: V) -> V:
    """``value`` when the protocol message ``build`` makes of it is valid; its ValueError
    (what Twilio cannot change, a blank hint) becomes the config error."""
    try:
        build()
    except ValueError as err:
        raise key_problem((), str(err)) from None
    return value
