"""JSON from outside (Twilio's frames and webhooks, the model's tool input) parsed with a bound
on nesting.

``json.loads`` accepts nesting up to the interpreter's recursion limit, and everything that
walks the result afterwards (schema validation, the store's serializer, ``json.dumps`` in a
log line) recurses again: a few kilobytes of ``[[[[...`` became a ``RecursionError`` (an HTTP
500, a dead socket) somewhere far from the parse. Here the nesting is checked first, and only
when the text has enough brackets to exceed the bound at all, so ordinary frames pay one
``str.count`` pass.
"""

from __future__ import annotations

import json
from typing import Any

MAX_DEPTH = 32


class TooDeep(ValueError):
    """The text nests arrays and objects deeper than allowed."""


def loads(text: str | bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads`` that raises ``TooDeep`` (a ``ValueError``) past ``max_depth`` levels,
    like any other malformed JSON."""
    if isinstance(text, bytes | bytearray):
        text = bytes(text).decode("utf-8")
    if text.count("[") + text.count("{") > max_depth:
        _check_depth(text, max_depth)
    return json.loads(text)


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
