"""The ``scripted`` section of a use case: the offline model's rules (``llm.scripted``).

A rule's ``then`` is what is said after its tool returns: one sentence, or a list of cases
that choose a sentence by the result (``when``: fields equal to values, or ``failed``). The
cases are checked at load for what can be known there: a case that can never be chosen (an
earlier one fits every result it fits) and a sentence for a failed tool that would fill a
field (a failure has no result). Which fields a tool returns is not declared anywhere, so
a ``when`` naming one it never returns is found only when it runs (``llm.scripted_then``).
"""

from __future__ import annotations

import string
from typing import Any

from pydantic import (
    Field,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)

from voiceagent.usecase_relay import Strict, key_problem, regex_ok, stored

FAILED = "failed"       # the ``when`` of the case said when the tool fails
Value = str | int | float | bool | None


class ScriptedToolStep(Strict):
    name: str
    input: dict[str, Any] = Field(default_factory=dict)


class ThenCase(Strict):
    """One sentence of a ``then``, said when ``when`` fits: every named result field equals
    its value (``null``: the field is absent or null), or ``failed``: the tool failed. No
    ``when``: any result the cases before it did not fit."""

    say: str = Field(min_length=1)
    when: str | dict[str, Value] | None = None

    @field_validator("when", mode="before")
    @classmethod
    def _when_ok(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value != FAILED:
                raise key_problem((), f"when is a map of result fields to values, or "
                                      f"{FAILED!r} for a tool that failed; not {value!r}")
        elif isinstance(value, dict):
            if not value:
                raise key_problem((), "when names no field: leave it out for the case said "
                                      "when no case before it fits")
            for field, expected in value.items():
                if not (expected is None or isinstance(expected, str | int | float | bool)):
                    kind = type(expected).__name__
                    kind = {"dict": "map", "list": "list"}.get(
                        kind, f"{kind} (quote it to compare text)")    # YAML's dates
                    raise key_problem((field,), "a result field is compared with one value "
                                      f"(text, a number, true/false or null), not a {kind}")
        elif value is not None:
            raise key_problem((), f"when is a map of result fields to values, or {FAILED!r}")
        return value

    def conditions(self) -> frozenset[tuple[str, str, Any]]:
        """``when`` as comparable facts: a case fits every result that an earlier case with a
        subset of its facts fits. True is not 1 here, as at run time."""
        assert isinstance(self.when, dict | None)
        return frozenset((field, *_typed(value)) for field, value in (self.when or {}).items())


def _typed(value: Value) -> tuple[str, Any]:
    if value is None or isinstance(value, bool | str):
        return type(value).__name__, value
    return "number", float(value)


class ScriptedRule(Strict):
    """Offline model behaviour: a regex over the caller's words -> a streamed reply, or a tool
    call whose result is spoken with ``then`` (``{field}`` fills from the result object).
    ``then: text`` is short for one case with no ``when``, and is stored that way."""

    match: str
    reply: str | None = None
    tool: ScriptedToolStep | None = None
    then: tuple[ThenCase, ...] | None = None

    @field_validator("match")
    @classmethod
    def _regex_ok(cls, value: str) -> str:
        return regex_ok(value)

    @field_validator("then", mode="before")
    @classmethod
    def _one_sentence_is_one_case(cls, value: Any) -> Any:
        if isinstance(value, str):
            return ({"say": value},)
        if value is not None and not isinstance(value, list | tuple):
            raise key_problem((), "then is a sentence, or a list of cases each with say "
                                  "and an optional when")
        return value

    @field_validator("then")
    @classmethod
    def _cases_ok(cls, cases: tuple[ThenCase, ...] | None, info: ValidationInfo
                  ) -> tuple[ThenCase, ...] | None:
        if cases is None or stored(info):
            return cases
        if not cases:
            raise key_problem((), "then lists no case: give at least one say")
        for index, case in enumerate(cases):
            if case.when == FAILED:
                if (earlier := _first(cases[:index], FAILED)) is not None:
                    raise key_problem((index,), f"never said: case {earlier} is for a failed "
                                                "tool too")
                if fields := _fields(case.say):
                    raise key_problem((index, "say"), "a failed tool has no result to fill "
                                      f"{{{fields[0]}}} from: say it without fields")
                continue
            for earlier, before in enumerate(cases[:index]):
                if before.when != FAILED and before.conditions() <= case.conditions():
                    raise key_problem((index,), f"never said: case {earlier} fits every "
                                      "result this one fits; put this one first")
        return cases

    @model_validator(mode="after")
    def _answers(self, info: ValidationInfo) -> ScriptedRule:
        if self.tool is None and not stored(info):
            if self.reply is None:
                raise key_problem((), "a rule needs reply and/or tool")
            if self.then is not None:
                raise key_problem(("then",), "then is said after the tool's result; set tool")
        return self

    @field_serializer("then")
    def _one_sentence_as_written(self, cases: tuple[ThenCase, ...] | None) -> Any:
        """A lone case with no ``when`` as the text it was: a release from before cases
        reads the stored item as it always did."""
        if cases is not None and len(cases) == 1 and cases[0].when is None:
            return cases[0].say
        return None if cases is None else [case.model_dump(exclude_none=True)
                                           for case in cases]


class ScriptedConfig(Strict):
    rules: tuple[ScriptedRule, ...] = ()
    fallback: str = "Sorry, I did not catch that. Could you say it another way?"
    first_token_delay_ms: int | None = Field(default=None, ge=0, le=10_000)
    token_delay_ms: int | None = Field(default=None, ge=0, le=2_000)


def _first(cases: tuple[ThenCase, ...], when: str) -> int | None:
    return next((i for i, case in enumerate(cases) if case.when == when), None)


def _fields(template: str) -> list[str]:
    try:
        return [field for _, field, _, _ in string.Formatter().parse(template) if field]
    except ValueError:                          # unbalanced braces: said without them
        return []
