"""The cap on caller words the agent never answered, kept in one user message.

Prompts the agent never answered (each reply cut before a word was heard) merge into one user
message; a caller who keeps cutting in, or a noisy line, would grow it without end, and every
model request and store write carries all of it. Past ``MAX_UNANSWERED_CHARS`` its oldest
words go (tool results stay).
"""

from __future__ import annotations

import logging
from typing import Any

from actors.history_span import text_of
from voiceagent.llm.base import Message

log = logging.getLogger(__name__)

MAX_UNANSWERED_CHARS = 8000      # caller words one user message keeps (4 prompts at the cap)


def cap_unanswered(messages: list[Message], meta: list[dict[str, Any]], at: int = -1) -> None:
    """Drop the oldest caller words of user message ``at`` past ``MAX_UNANSWERED_CHARS``,
    counted in its transcript facts (``words_dropped``). The message is replaced, never
    changed in place: requests may hold it."""
    blocks = messages[at]["content"]
    total = sum(len(t) for b in blocks if (t := text_of(b)) is not None)
    if total <= MAX_UNANSWERED_CHARS:
        return
    kept: list[dict[str, Any]] = []
    dropped = 0
    for n, block in enumerate(blocks):
        said = text_of(block)
        if said is not None and total > MAX_UNANSWERED_CHARS and n < len(blocks) - 1:
            total -= len(said)
            dropped += 1
            continue
        kept.append(block)
    messages[at] = {"role": "user", "content": kept}
    facts = meta[at]
    facts["words_dropped"] = int(facts.get("words_dropped", 0)) + dropped
    log.warning("unanswered caller words dropped", extra={
        "prompts": dropped, "limit_chars": MAX_UNANSWERED_CHARS})
