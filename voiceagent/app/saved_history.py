"""The conversation a socket that reconnects to a known call resumes, read from the store.

A message's store key is its wall-clock time (``records.chat_key``), and the conversation is
read in key order, split at the last set-aside mark. Processes' clocks differ (seconds, on a
host whose clock was stepped), so a reconnect stamps its messages after every chat item the
store holds for the call, marks included, not after its own clock: a fresh conversation that
had stored nothing yet was keyed before the mark by a process whose clock was behind the one
that set the old conversation aside, and the next reconnect set it aside with the old one.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import voiceagent.store.records as records
from actors.history import History
from voiceagent.llm.base import Message
from voiceagent.llm.converse import converse_problems
from voiceagent.store.base import Item

log = logging.getLogger(__name__)


class SavedHistory(NamedTuple):
    messages: tuple[Message, ...]
    meta: tuple[dict[str, Any], ...]    # each message's stored facts, at_ms (its key) included
    set_aside_at: int                   # set the conversation aside there (0: nothing to)
    after_ms: int                       # the last chat item's time: stamp new messages after it


def saved_history(items: list[Item]) -> SavedHistory:
    """The call's chat items (``query`` order) as the conversation so far; repaired as
    ``History.resumed`` does. Beyond repair, the call starts afresh: the conversation is
    set aside rather than read again, and the call started afresh again, on every
    reconnect."""
    read, _ = records.readable_chat(items)
    after_ms = max((entry["at_ms"] for entry in read), default=0)
    entries = records.since_set_aside(read)
    messages = tuple(entry["chat"] for entry in entries)
    meta = tuple({**entry["meta"], "at_ms": entry["at_ms"]} for entry in entries)
    if messages and converse_problems(History.resumed(messages, meta).for_request()):
        log.warning("saved history unusable, starting fresh",
                    extra={"messages": len(messages)})
        return SavedHistory((), (), max(entry["at_ms"] for entry in entries), after_ms)
    return SavedHistory(messages, meta, 0, after_ms)
