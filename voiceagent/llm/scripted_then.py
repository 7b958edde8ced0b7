"""What the offline model says after a tool: the sentence a rule's ``then`` chooses by the
tool's result, filled from it.

A ``when`` naming a field the result lacks compares as null: which fields a tool returns is
declared nowhere, so a misspelt or never-returned one cannot be refused at load. The case
then does not fit (unless it asks for null), and the caller would hear another sentence
without a trace of why: ``choose`` reports the names, and the model logs them.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from voiceagent.usecase_scripted import FAILED, ThenCase

_PLACEHOLDER = re.compile(r"\{[^{}]*\}")


@dataclass(frozen=True, slots=True)
class Choice:
    say: str | None                 # None: no case fits (the caller hears a generic line)
    absent: tuple[str, ...]         # ``when`` fields the result lacked, in the cases tried


def choose(cases: Sequence[ThenCase], data: Mapping[str, Any], *, failed: bool) -> Choice:
    """The first case that fits: ``when: failed`` for a failed tool, else the first whose
    fields all equal the result's (a case with no ``when`` fits any result)."""
    if failed:
        return Choice(next((c.say for c in cases if c.when == FAILED), None), ())
    absent: dict[str, None] = {}
    for case in cases:
        if case.when == FAILED:
            continue
        assert isinstance(case.when, dict | None)
        fits = True
        for field, expected in (case.when or {}).items():
            if field not in data and expected is not None:
                absent[field] = None
            if not _equal(data.get(field), expected):
                fits = False
                break
        if fits:
            return Choice(case.say, tuple(absent))
    return Choice(None, tuple(absent))


def _equal(value: Any, expected: Any) -> bool:
    """JSON equality: true is not 1, 2 is 2.0."""
    if isinstance(value, bool) or isinstance(expected, bool):
        return value is expected
    return bool(value == expected)


def missing_fields(template: str, data: Mapping[str, Any]) -> list[str]:
    """The top-level names of ``template``'s placeholders that ``data`` lacks."""
    try:
        names = [field for _, field, _, _ in string.Formatter().parse(template) if field]
    except ValueError:                          # unbalanced braces: fill drops them
        return []
    tops = dict.fromkeys(re.split(r"[.\[]", name, maxsplit=1)[0] for name in names)
    return [top for top in tops if top and not top.isdigit() and top not in data]



class _Field:
    """A result value for ``str.format_map``: a missing field or a spec that does not fit
    the value renders as plain text (or nothing) instead of raising."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __format__(self, spec: str) -> str:
        if self.value is None:
            return ""
        if _scalars(self.value):                # a list is said as its items, not as Python
            return ", ".join(format(_Field(item), spec) for item in self.value)   # writes it
        try:
            return format(self.value, spec)
        except (ValueError, TypeError):
            return str(self.value)

    def __str__(self) -> str:
        return "" if self.value is None else format(self, "")

    __repr__ = __str__

    def __getitem__(self, key: Any) -> _Field:
        try:
            return _Field(self.value[key])
        except (KeyError, IndexError, TypeError):
            return _Field(None)

    def __getattr__(self, name: str) -> _Field:
        return _Field(None)                     # JSON results have no attributes


def _scalars(value: Any) -> bool:
    """A list of text and numbers: what a tool returns for slots, items or times."""
    return isinstance(value, list) and all(
        isinstance(item, str | int | float) and not isinstance(item, bool) for item in value)


class _Fields(dict[str, _Field]):
    def __missing__(self, key: str) -> _Field:
        return _Field(None)


def fill(template: str, data: Mapping[str, Any]) -> str:
    """``template`` with ``{field}`` placeholders filled from ``data``; never raises."""
    try:
        text = template.format_map(_Fields({k: _Field(v) for k, v in data.items()}))
    except (ValueError, IndexError, KeyError):  # unbalanced braces or positional fields
        text = _PLACEHOLDER.sub("", template)
    text = re.sub(r"\$(?=[\s.,!?]|$)", "", text)             # a price that was left out
    text = re.sub(r"\s+([.,!?;:])", r"\1", re.sub(r"\s+", " ", text))
    return re.sub(r"[,;:]+(?=[.,!?;:])", "", text).strip()      # "soup,." -> "soup."


