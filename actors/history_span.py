"""Where a turn's words stand in the history (``Mark``), and setting aside the messages of
the turns after one while a barge-in cuts the turns before: a goodbye that began after the
caller cut in went out after the interrupt, and is heard. Also the words a block or a message
holds (``text_of``, ``texts_of``), which every part of the history reads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from voiceagent.llm.base import Message

Tail = tuple[list[Message], list[dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class Mark:
    """Where a turn's words start in the history: a message, and how many of its blocks come
    before them. A turn that speaks right after another (a re-prompt, a goodbye) merges its
    words into the message before it, since roles alternate; a barge-in into it must cut only
    its own blocks, not the earlier reply's."""

    index: int
    blocks: int = 0

    def first_block(self, at: int) -> int:
        """In message ``at``, the first block that is this turn's (after an earlier turn's)."""
        return self.blocks if at == self.index else 0

    def after_trim(self, dropped: int) -> Mark | None:
        """This mark once ``History.trim`` dropped ``dropped`` messages; None if it went."""
        return Mark(self.index - dropped, self.blocks) if self.index >= dropped else None


def unmoved(mark: Mark) -> Mark:
    return mark


def split_off(messages: list[Message], meta: list[dict[str, Any]], end: Mark) -> Tail:
    """Take the messages from ``end`` out of ``messages`` (and their facts out of ``meta``);
    the blocks of ``end``'s message from ``end.blocks`` on come out as a message of their
    own. Messages are replaced, never changed in place: requests may hold them."""
    tail, facts = messages[end.index:], meta[end.index:]
    del messages[end.index:], meta[end.index:]
    if end.blocks and tail:
        whole = tail[0]
        messages.append({"role": whole["role"], "content": whole["content"][:end.blocks]})
        meta.append(facts[0])
        tail[0] = {"role": whole["role"], "content": whole["content"][end.blocks:]}
        facts[0] = dict(facts[0])
    return tail, facts


def rejoin(messages: list[Message], meta: list[dict[str, Any]], end: Mark,
           tail: Tail) -> tuple[Callable[[Mark], Mark], list[int]]:
    """Put back what ``split_off`` took out, each message merged into the one before it when
    the roles meet (roles alternate). Returns where a mark at or after ``end`` now stands,
    and the messages a merge changed (to be stored again, and two prompts capped)."""
    landed: list[Mark] = []             # where each message's first block went
    merged: list[int] = []
    for message, facts in zip(*tail, strict=True):
        last = messages[-1] if messages else None
        if last is not None and last["role"] == message["role"]:
            landed.append(Mark(len(messages) - 1, len(last["content"])))
            if message["content"]:
                messages[-1] = {"role": last["role"],
                                "content": [*last["content"], *message["content"]]}
                merged.append(len(messages) - 1)
        else:
            landed.append(Mark(len(messages)))
            if message["content"]:
                messages.append(message)
                meta.append(facts)
    after = next_words(messages)

    def moved(mark: Mark) -> Mark:
        k = mark.index - end.index
        if k < 0:
            return mark
        to = landed[k] if k < len(landed) else after
        return Mark(to.index, to.blocks + mark.blocks - (end.blocks if k == 0 else 0))

    return moved, merged


def next_words(messages: list[Message]) -> Mark:
    """Where the next turn's words go: after the last message, or in it when it is the
    assistant's (roles alternate)."""
    last = messages[-1] if messages else None
    if last is not None and last["role"] == "assistant":
        return Mark(len(messages) - 1, len(last["content"]))
    return Mark(len(messages))


def text_of(block: dict[str, Any]) -> str | None:
    """A block's text; None for any other block (a tool use or result, reasoning)."""
    value = block.get("text")
    return value if isinstance(value, str) else None


def texts_of(message: Message) -> str:
    """A message's texts, joined by a space."""
    return " ".join(t for b in message["content"] if (t := text_of(b)) is not None)
