"""Where the history may be cut when it grows too long for a model request, by count and by
size.

A count alone (``MAX_HISTORY_MESSAGES``) let a few large tool results grow every request to
hundreds of kilobytes: each turn's first token comes later as the input grows, and past the
model's context window Bedrock refuses the request (``ValidationException``), the turn
apologises, and so does every later one, since the next request carries the same history. So
the size counts too (``MAX_HISTORY_CHARS``): the oldest exchanges go first, and the cut always
lands where a conversation may start (a user message holding caller words, not tool results).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from voiceagent.llm.base import Message


class MessageSizes:
    """Each message's size in characters (its content as JSON), measured once: a message is
    never changed in place (a change puts a new dict in its slot), so its identity keys it.
    The message is kept with its size, so a reused ``id`` never reads another's size."""

    def __init__(self) -> None:
        self._known: dict[int, tuple[Message, int]] = {}

    def of(self, messages: Sequence[Message]) -> list[int]:
        """The sizes of ``messages``; forgets every message not among them."""
        known, self._known = self._known, {}
        sizes = []
        for message in messages:
            hit = known.get(id(message))
            size = hit[1] if hit is not None and hit[0] is message else _chars(message)
            self._known[id(message)] = (message, size)
            sizes.append(size)
        return sizes


def _chars(message: Message) -> int:
    return len(json.dumps(message["content"], ensure_ascii=False, default=str))


def starts_conversation(message: Message) -> bool:
    """A user message of caller words (not a tool round's results): Converse may open there,
    and no toolUse before it loses its result."""
    return message["role"] == "user" and not any(
        "toolResult" in block for block in message["content"])


def trim_point(messages: Sequence[Message], sizes: Sequence[int] | None, *, sealed: int,
               max_messages: int, max_chars: int | None) -> int:
    """How many of the oldest ``messages`` to forget (0: none) so that at most
    ``max_messages`` stay, and at most ``max_chars`` of them when ``sizes`` are given. Only
    the first ``sealed`` may go (the rest are not stored yet). When no cut brings the size
    under ``max_chars``, the latest possible cut is taken: the newest exchanges stay."""
    total = sum(sizes) if sizes is not None else 0
    over_size = sizes is not None and max_chars is not None and total > max_chars
    first = len(messages) - max_messages
    if first <= 0 and not over_size:
        return 0
    best, dropped = 0, 0
    for cut in range(1, sealed + 1):
        if sizes is not None:
            dropped += sizes[cut - 1]
        if cut < first or cut >= len(messages) or not starts_conversation(messages[cut]):
            continue
        best = cut
        if not over_size or max_chars is None or total - dropped <= max_chars:
            break
    return best
