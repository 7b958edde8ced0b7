"""Cutting the assistant's words in the history down to what the caller heard: after a
barge-in (Twilio's ``utteranceUntilInterrupt``), or, with no word from Twilio, by taking off
the words the relay writer withheld.

The functions change ``Held``'s lists in place (``History`` owns them) and never a message
in place: a changed message is a new dict in its slot, since model requests share the
messages. A message a cut changes, moves or merges is handed to ``store_again``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from actors.heard_audio import AudioUses, said_before_audio
from actors.heard_words import heard_within, split_heard
from actors.history_span import Mark, rejoin, split_off, text_of, texts_of, unmoved
from actors.unanswered_words import cap_unanswered
from voiceagent.llm.base import Message


@dataclass(frozen=True, slots=True)
class Held:
    """The history's messages and their transcript facts, and where a message that changed
    goes to be stored again (its item is keyed by at_ms and position)."""

    messages: list[Message]
    meta: list[dict[str, Any]]
    store_again: Callable[[int], None]


def apply_heard(held: Held, start: Mark, heard: str, duration_ms: int | None,
                audio_uses: AudioUses) -> None:
    """Cut the assistant text since ``start`` down to what the caller heard.

    Twilio's ``utteranceUntilInterrupt`` holds the words of the chunk it was speaking,
    anywhere in the talk cycle, which may span several assistant messages (text, tool
    round, more text). The texts before it were heard whole, and its words are split
    between the texts in order (``heard_words``: word by word, or aligned where Twilio's
    words render a text otherwise than we sent it); tool blocks stay, since their results
    already stand in the history. Assistant messages left with nothing are removed and
    the neighbours merged. Nothing heard while audio played (``duration_ms``): the words
    before a tool's audio were (``heard_audio``).
    """
    messages = held.messages
    # An earlier turn's message may be in the store already: what changes is stored again
    held.store_again(start.index)
    places = [(at, n) for at in range(start.index, len(messages))
              if messages[at]["role"] == "assistant"
              for n, block in enumerate(messages[at]["content"])
              if n >= start.first_block(at) and text_of(block) is not None]
    texts = [str(messages[at]["content"][n]["text"]) for at, n in places]
    audio_only = not heard.strip() and duration_ms is not None and duration_ms > 0
    shares = (said_before_audio(messages, start, texts, audio_uses)
              if audio_only else split_heard(texts, heard.strip()))
    takes = dict(zip(places, shares, strict=True))
    for at in sorted({at for at, _ in places}):
        message = messages[at]
        kept = [block if (at, n) not in takes else {"text": takes[at, n]}
                for n, block in enumerate(message["content"])
                if (at, n) not in takes or takes[at, n]]
        messages[at] = {"role": "assistant", "content": kept}
        held.meta[at].update(generated=texts_of(message), interrupted=True)
    _drop_empty(held, start.index)


def fits(messages: list[Message], start: Mark, heard: str, end: Mark | None) -> bool:
    """Whether ``heard`` can be what the caller heard of the words from ``start`` (up to
    ``end``, a later turn's start): one begins the other, or the heard words are a run
    of them further on (a later chunk), word by word (case, spacing and punctuation
    aside: ``heard_within``). Nothing heard fits any turn."""
    stop = len(messages) if end is None else min(end.index + 1, len(messages))
    said = " ".join(
        t for at in range(start.index, stop)
        if messages[at]["role"] == "assistant"
        for b in messages[at]["content"][
            start.first_block(at):None if end is None or at < end.index else end.blocks]
        if (t := text_of(b)) is not None)
    return heard_within(said, heard)


def record_cut(held: Held, start: Mark, end: Mark | None, *, heard: str | None, unsent: str,
               duration_ms: int | None, audio_uses: AudioUses) -> Callable[[Mark], Mark]:
    """Cut the turns from ``start`` to what the caller heard (``apply_heard``), or, when
    Twilio did not say, take off the words the writer withheld (``drop_unsent``).

    ``end``: where a turn that started after the caller cut in begins (a goodbye, a
    re-prompt). Its words went out after the interrupt and are heard, so the cut stops
    there; they are set aside, and put back after the cut. Returns where a mark at or
    after ``end`` now stands (the cut may have emptied or shortened the message a
    goodbye merged into)."""
    if heard is None and not unsent:
        return unmoved
    tail = split_off(held.messages, held.meta, end) if end is not None else None
    if heard is not None:
        apply_heard(held, start, heard, duration_ms, audio_uses)
    else:
        drop_unsent(held, start, unsent)
    if end is None or tail is None:
        return unmoved
    moved, merged = rejoin(held.messages, held.meta, end, tail)
    for at in merged:
        held.store_again(at)
        if held.messages[at]["role"] == "user":    # a prompt put back after one
            cap_unanswered(held.messages, held.meta, at)
    return moved


def drop_unsent(held: Held, start: Mark, unsent: str) -> None:
    """Take ``unsent`` (words the relay writer withheld after the turn recorded them) off
    the end of the assistant text since ``start``: with no word from Twilio on what was
    heard, what was sent is what counts."""
    messages = held.messages
    unsent = unsent.strip()
    for at in range(len(messages) - 1, start.index - 1, -1):
        message = messages[at]
        if message["role"] != "assistant":
            continue
        # the last text of the turn: a tool round's text stands before its toolUse blocks,
        # which never went to the writer
        blocks = message["content"]
        texts = [n for n, block in enumerate(blocks) if text_of(block) is not None]
        last = texts[-1] if texts else -1
        said = text_of(blocks[last]) if texts else None
        if said is None and at >= start.index:
            continue        # a tool round with no words (a later turn's, at the end)
        if (said is None or last < start.first_block(at)
                or not unsent or not said.endswith(unsent)):
            return
        kept = said[:len(said) - len(unsent)].rstrip()
        held.store_again(at)
        messages[at] = {"role": "assistant", "content": [
            *blocks[:last], *([{"text": kept}] if kept else []), *blocks[last + 1:]]}
        held.meta[at].update(generated=texts_of(message), interrupted=True)
        _drop_empty(held, start.index)
        return


def _drop_empty(held: Held, start: int) -> None:
    rebuilt, meta = held.messages[:start], held.meta[:start]
    merged: list[int] = []
    for message, facts in zip(held.messages[start:], held.meta[start:], strict=True):
        if not message["content"]:
            continue
        if rebuilt and rebuilt[-1]["role"] == message["role"]:
            rebuilt[-1] = {"role": message["role"],
                           "content": [*rebuilt[-1]["content"], *message["content"]]}
            # the merged message keeps its own store key (at_ms, index), and is stored
            # again under it; its own facts win over the later message's
            meta[-1] = {**facts, **meta[-1]}
            held.store_again(len(rebuilt) - 1)
            if message["role"] == "user":
                merged.append(len(rebuilt) - 1)
        else:
            rebuilt.append(message)
            meta.append(facts)
    held.messages[:], held.meta[:] = rebuilt, meta
    for at in merged:               # two prompts the cut reply stood between
        cap_unanswered(held.messages, held.meta, at)
