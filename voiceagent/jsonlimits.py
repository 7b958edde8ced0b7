"""JSON from outside (Twilio's frames and webhooks, the model's tool input) parsed with a bound
on nesting.

``json.loads`` accepts nesting up to the interpreter's recursion limit, and everything that
walks the result afterwards (schema validation, the store's serializer, ``json.dumps`` in a
log line) recurses again: a few kilobytes of ``[[[[...`` became a ``RecursionError`` (an HTTP
500, a dead socket) somewhere far from the parse. Here the nesting is checked first, and only
when the text has enough brackets to exceed the bound at all, so ordinary frames pay one
``str.count`` pass.

Numbers JSON has no value for (``NaN``, ``Infinity``, and ``1e999``, which Python reads as
infinity) are refused too unless the caller asks for them: the model's tool input goes into
the history, and a request body holding ``Infinity`` is not JSON, so Bedrock would refuse
every later request of the call. So are numbers the store cannot hold (an int of more than 38
digits, a float beyond 1e-130 to 1e126): SQLite and Bedrock take them, DynamoDB refuses the
history item, and that round of the conversation was lost from the store.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from voiceagent.store.base import is_storable_number

# A tool's input and result are stored inside a chat item, 7 levels down (chat > content >
# block > toolResult > content > block > json); DynamoDB refuses an item nested past 32
# levels, and a refused message broke the history a reconnect resumes
MAX_DEPTH = 24


class TooDeep(ValueError):
    """The text nests arrays and objects deeper than allowed."""


class NotFinite(ValueError):
    """The text holds a number JSON has no value for."""

    def __init__(self) -> None:
        super().__init__("a number that is not finite (NaN, Infinity, or too large for a "
                         "64-bit float); JSON has no such value")


NUMBER_NOT_STORABLE = ("a number with more than 38 digits, or of a magnitude outside 1e-130 "
                       "to 1e126, which the store cannot hold; send it as a string")
EMPTY_KEY = "an object key that is empty, which the store cannot hold; name every key"
EMPTY_KEY_NAME = "(empty)"          # what ``plain`` calls such a key
_EMPTY_KEY = re.compile(r'""\s*:')    # in the text: an empty key, or something much like it


class NotStorable(ValueError):
    """The text holds a number the store cannot hold (``base.is_storable_number``), or an
    empty object key (DynamoDB refuses an empty attribute name at any depth of an item)."""

    def __init__(self, why: str = NUMBER_NOT_STORABLE) -> None:
        super().__init__(why)


def loads(text: str | bytes, *, max_depth: int = MAX_DEPTH, finite: bool = True,
          storable: bool = False) -> Any:
    """``json.loads`` that raises ``TooDeep`` past ``max_depth`` levels, unless ``finite``
    is False ``NotFinite`` for NaN, Infinity or a number out of a float's range, and with
    ``storable`` (and ``finite``) ``NotStorable`` for a number the store cannot hold: all
    ``ValueError``, like any other malformed JSON."""
    if isinstance(text, bytes | bytearray):
        text = bytes(text).decode("utf-8")
    if text.count("[") + text.count("{") > max_depth:
        _check_depth(text, max_depth)
    if not finite:
        return json.loads(text)
    if not storable:
        return json.loads(text, parse_float=_finite_float, parse_constant=_refuse_constant)
    return json.loads(text, parse_float=_storable_float, parse_int=_storable_int,
                      parse_constant=_refuse_constant,
                      object_pairs_hook=_named_object if _EMPTY_KEY.search(text) else None)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise NotFinite
    return value


def _storable_float(text: str) -> float:
    value = _finite_float(text)
    if not is_storable_number(value):
        raise NotStorable
    return value


def _storable_int(text: str) -> int:
    value = int(text)
    if not is_storable_number(value):
        raise NotStorable
    return value


def _refuse_constant(constant: str) -> None:
    raise NotFinite


def _named_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    if any(not key for key, _ in pairs):
        raise NotStorable(EMPTY_KEY)
    return dict(pairs)


def _check_depth(text: str, max_depth: int) -> None:
    depth = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > max_depth:
                raise TooDeep(f"JSON nested deeper than {max_depth} levels")
        elif char in "]}":
            depth -= 1


def depth(value: Any, *, limit: int = MAX_DEPTH) -> int:
    """How deep ``value`` (already parsed, e.g. by a library) nests, counting up to
    ``limit + 1`` at most, without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            if deepest > limit:
                return deepest
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return deepest


_SURROGATE = re.compile("[\ud800-\udfff]")


def valid_text(text: str) -> str:
    """``text`` with each lone surrogate replaced by U+FFFD. JSON's ``\\uD83D\\uDE00`` pairs
    are joined by the decoder already, so whatever surrogate is left is one on its own, and
    UTF-8 (a model request, the store) cannot encode it."""
    return text if text.isascii() else _SURROGATE.sub("\ufffd", text)


def plain(value: Any) -> tuple[Any, list[str]]:
    """``value`` as JSON holds it, for what came from code we do not control (a tool's
    result), and what had to change. The model request and the store serialize it later,
    far from the tool, where a ``datetime`` would end the call; failing the tool instead
    could make the model run a side effect again. So values JSON has no type for become
    their text, NaN and infinities null, a number the store cannot hold its decimal text
    (DynamoDB refuses it), an empty key ``EMPTY_KEY_NAME`` (DynamoDB refuses it too), and a
    lone surrogate U+FFFD (UTF-8 cannot encode it).
    ``ValueError`` for what cannot be made JSON: too deep, circular, a non-text key, a value
    whose ``str()`` raises."""
    if depth(value) > MAX_DEPTH:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
    changed: list[str] = []

    def as_text(other: Any) -> str:
        changed.append(f"{type(other).__name__} as text")
        try:
            return str(other)
        except Exception as err:    # its own code (an ORM row's lazy load): only the type,
            # as its message may hold what the caller said
            raise ValueError(f"a {type(other).__name__} value cannot be made text (its str() "
                             f"raised {type(err).__name__}); return its fields instead"
                             ) from None

    def as_null(constant: str) -> None:
        changed.append(f"{constant} as null")

    def int_or_text(number: str) -> int | str:
        value = int(number)
        if is_storable_number(value):
            return value
        changed.append("int of more than 38 digits as text")
        return number

    def float_or_text(number: str) -> float | str:
        value = float(number)           # finite: json.dumps wrote NaN and infinities as such
        if is_storable_number(value):
            return value
        changed.append("float out of the store's range as text")
        return number

    try:
        text = json.dumps(value, ensure_ascii=False, default=as_text)
    except (TypeError, ValueError, RecursionError) as err:
        raise ValueError(str(err)) from None
    def key_named(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out = dict(pairs)
        if "" in out:
            name = EMPTY_KEY_NAME
            while name in out:
                name += "_"
            out[name] = out.pop("")
            changed.append(f"empty key as {name!r}")
        return out

    if (cleaned := valid_text(text)) != text:
        changed.append("lone surrogate as U+FFFD")
    return json.loads(cleaned, parse_constant=as_null, parse_int=int_or_text,
                      parse_float=float_or_text,
                      object_pairs_hook=key_named if _EMPTY_KEY.search(cleaned) else None
                      ), changed
