"""The conversation of one call, kept valid for Bedrock's Converse API at every step.

One owner (the call's llm_streamer) changes it; everything else gets copies, except model
requests, which share its messages (it never changes a message in place). The rules it keeps
are the model layer's (``voiceagent.llm.converse``): roles alternate and start with the user,
no empty content or blank text, every toolUse is answered by exactly its toolResults in the
next message; and an assistant message records what the caller heard.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from actors.heard_audio import AudioUses, said_before_audio
from actors.heard_words import heard_within, split_heard
from actors.history_span import Mark, next_words, rejoin, split_off, unmoved
from actors.history_trim import MessageSizes, trim_point
from voiceagent.llm.base import Message
from voiceagent.llm.converse import results_apart

log = logging.getLogger(__name__)

__all__ = ["CALL_CONNECTED", "LOST_RESULT", "MAX_UNANSWERED_CHARS", "History", "Mark"]

CALL_CONNECTED = "(The call has connected.)"   # stands before a greeting: Converse must open
                                               # with a user message
_CALL_CONNECTED_MESSAGE: Message = {"role": "user", "content": [{"text": CALL_CONNECTED}]}
MAX_UNANSWERED_CHARS = 8000      # caller words one user message keeps (4 prompts at the cap)
LOST_RESULT = ("The call's connection dropped before this tool's result was recorded; "
               "whether it ran is unknown. Check before repeating it.")


def _text(block: dict[str, Any]) -> str | None:
    value = block.get("text")
    return value if isinstance(value, str) else None


class History:
    def __init__(self, messages: Iterable[Message] = (),
                 meta: Sequence[dict[str, Any]] | None = None) -> None:
        self._messages: list[Message] = [copy.deepcopy(m) for m in messages]
        self._meta: list[dict[str, Any]] = (   # for transcripts; at_ms keys the stored item
            [dict(m) for m in meta] if meta is not None else [{} for _ in self._messages])
        if len(self._meta) != len(self._messages):
            raise ValueError("History: one meta mapping per message")
        self._sealed = len(self._messages)  # messages before this index are in the store
        self._offset = 0          # messages trimmed from memory (they are in the store)
        # per position, the at_ms of the item the store holds there (None: none), so that
        # an item a cut moved or dropped is removed, not left for a reconnect to resume
        self._stored_at: list[int | None] = [_at_ms(m) for m in self._meta]
        # a new message's at_ms (its store key) comes after every one before it, whatever
        # the wall clock does (stepped back, another process's a little behind): a reconnect
        # reads the messages in key order
        self._last_at_ms = max((_at_ms(m) for m in self._meta), default=0)
        self._sizes = MessageSizes()        # for ``trim`` by size
        self.audio_uses = AudioUses()       # tool uses that played the caller something
        # A message is never changed in place once it is in ``_messages``: a change (a merge,
        # a barge-in cut) puts a new dict in its slot. So model requests share the messages
        # themselves, with no copy per request and no second copy kept for requests.

    @classmethod
    def resumed(cls, messages: Sequence[Message], meta: Sequence[dict[str, Any]]) -> History:
        """A conversation reloaded from the store when Twilio reconnects a failed relay
        session. The first socket may have failed anywhere: before the model answered the
        caller (it ends with the caller's words), right after a tool result, or with a
        toolUse whose result never got stored. The next prompt merges into a trailing user
        message (which is stored again under its own key, ``meta``'s at_ms and its index), and
        a dangling toolUse is answered with an error result, so the next request is valid."""
        history = cls(messages, meta)
        history._close_dangling_tool_uses()
        return history

    def keep_after(self, at_ms: int) -> None:
        """Stamp new messages after ``at_ms``: a saved conversation set aside there stays
        before them in the store's key order."""
        self._last_at_ms = max(self._last_at_ms, at_ms)

    def _close_dangling_tool_uses(self) -> None:
        if not self._messages or self._messages[-1]["role"] != "assistant":
            return
        uses = [b["toolUse"] for b in self._messages[-1]["content"]
                if isinstance(b.get("toolUse"), dict)]
        self.add_tool_results([{"toolResult": {
            "toolUseId": use.get("toolUseId", ""), "status": "error",
            "content": [{"text": LOST_RESULT}]}} for use in uses])

    def __len__(self) -> int:
        return len(self._messages)

    @property
    def messages(self) -> tuple[Message, ...]:
        return tuple(copy.deepcopy(self._messages))

    def mark(self) -> Mark:
        """Where the next turn's words go; pass it to ``apply_heard`` after a barge-in."""
        return next_words(self._messages)

    @property
    def session_start(self) -> Mark:
        """Where this relay session's messages start: 0 for a new call (a barge-in into the
        greeting cuts it), the end of a resumed conversation (what the first session said
        was heard, and is stored)."""
        return Mark(self._sealed)

    # ------------------------------------------------------------------ appending

    def add_user_text(self, text: str) -> None:
        text = text.strip()
        if text:
            self._append("user", [{"text": text}])
            self._cap_caller_words()

    def _cap_caller_words(self, at: int = -1) -> None:
        """Prompts the agent never answered (each reply cut before a word was heard) merge
        into one user message; a caller who keeps cutting in, or a noisy line, would grow it
        without end, and every model request and store write carries all of it. Past
        ``MAX_UNANSWERED_CHARS`` its oldest words go (tool results stay)."""
        blocks = self._messages[at]["content"]
        total = sum(len(t) for b in blocks if (t := _text(b)) is not None)
        if total <= MAX_UNANSWERED_CHARS:
            return
        kept: list[dict[str, Any]] = []
        dropped = 0
        for n, block in enumerate(blocks):
            said = _text(block)
            if said is not None and total > MAX_UNANSWERED_CHARS and n < len(blocks) - 1:
                total -= len(said)
                dropped += 1
                continue
            kept.append(block)
        self._messages[at] = {"role": "user", "content": kept}
        meta = self._meta[at]
        meta["words_dropped"] = int(meta.get("words_dropped", 0)) + dropped
        log.warning("unanswered caller words dropped", extra={
            "prompts": dropped, "limit_chars": MAX_UNANSWERED_CHARS})

    def add_assistant(self, text: str, tool_uses: Sequence[dict[str, Any]] = (), *,
                      reasoning: Sequence[Mapping[str, Any]] = ()) -> None:
        """Record what the assistant said (right-stripped: Converse rejects trailing blanks)
        and the tools it asked for, after the reasoning blocks of the reply that asked for
        them, as it sent them (a reasoning model wants them back, first, unchanged; never
        without a tool use). Nothing said and nothing asked records nothing."""
        blocks: list[dict[str, Any]] = ([copy.deepcopy(dict(b)) for b in reasoning]
                                        if tool_uses else [])
        if text.strip():
            blocks.append({"text": text.strip()})
        blocks.extend({"toolUse": copy.deepcopy(dict(use))} for use in tool_uses)
        if blocks:
            self._append("assistant", blocks)

    def add_tool_results(self, results: Sequence[dict[str, Any]]) -> None:
        """All results of one assistant message go in one user message, in its order."""
        if results:
            self._append("user", [copy.deepcopy(dict(r)) for r in results])

    def answer(self, result: dict[str, Any]) -> bool:
        """Put ``result`` in place of the stand-in with its toolUseId (``actors.settling``),
        stored again if stored; False when no message holds it any more (trimmed)."""
        tool_use_id = result["toolResult"]["toolUseId"]
        for at in range(len(self._messages) - 1, -1, -1):
            blocks = self._messages[at]["content"]
            for n, block in enumerate(blocks):
                held = block.get("toolResult")
                if isinstance(held, dict) and held.get("toolUseId") == tool_use_id:
                    self._messages[at] = {"role": self._messages[at]["role"], "content": [
                        *blocks[:n], copy.deepcopy(dict(result)), *blocks[n + 1:]]}
                    self._sealed = min(self._sealed, at)
                    return True
        return False

    def annotate(self, **meta: Any) -> None:
        """Attach transcript facts (turn number, kind) to the last message."""
        if self._messages:
            self._meta[-1].update(meta)

    def _append(self, role: str, blocks: list[dict[str, Any]]) -> None:
        last = self._messages[-1] if self._messages else None
        if last is not None and last["role"] == role:
            # merge (roles must alternate) into a new message: requests may hold the old one
            self._messages[-1] = {"role": role, "content": [*last["content"], *blocks]}
            # A stored message that changes is stored again (its key is its at_ms and index).
            self._sealed = min(self._sealed, len(self._messages) - 1)
        else:
            self._messages.append({"role": role, "content": blocks})
            self._last_at_ms = max(int(time.time() * 1000), self._last_at_ms + 1)
            self._meta.append({"at_ms": self._last_at_ms})

    # ------------------------------------------------------------------ barge-in

    def apply_heard(self, start: Mark, heard: str, duration_ms: int | None = None) -> None:
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
        # An earlier turn's message may be in the store already: what changes is stored again
        self._sealed = min(self._sealed, start.index)
        places = [(at, n) for at in range(start.index, len(self._messages))
                  if self._messages[at]["role"] == "assistant"
                  for n, block in enumerate(self._messages[at]["content"])
                  if n >= start.first_block(at) and _text(block) is not None]
        texts = [str(self._messages[at]["content"][n]["text"]) for at, n in places]
        audio_only = not heard.strip() and duration_ms is not None and duration_ms > 0
        shares = (said_before_audio(self._messages, start, texts, self.audio_uses)
                  if audio_only else split_heard(texts, heard.strip()))
        takes = dict(zip(places, shares, strict=True))
        for at in sorted({at for at, _ in places}):
            message = self._messages[at]
            kept = [block if (at, n) not in takes else {"text": takes[at, n]}
                    for n, block in enumerate(message["content"])
                    if (at, n) not in takes or takes[at, n]]
            self._messages[at] = {"role": "assistant", "content": kept}
            self._meta[at].update(generated=_texts(message), interrupted=True)
        self._drop_empty(start.index)

    def fits(self, start: Mark, heard: str, end: Mark | None = None) -> bool:
        """Whether ``heard`` can be what the caller heard of the words from ``start`` (up to
        ``end``, a later turn's start): one begins the other, or the heard words are a run
        of them further on (a later chunk), word by word (case, spacing and punctuation
        aside: ``heard_within``). Nothing heard fits any turn."""
        stop = len(self._messages) if end is None else min(end.index + 1, len(self._messages))
        said = " ".join(
            t for at in range(start.index, stop)
            if self._messages[at]["role"] == "assistant"
            for b in self._messages[at]["content"][
                start.first_block(at):None if end is None or at < end.index else end.blocks]
            if (t := _text(b)) is not None)
        return heard_within(said, heard)

    def record_cut(self, start: Mark, end: Mark | None, *, heard: str | None,
                   unsent: str, duration_ms: int | None = None) -> Callable[[Mark], Mark]:
        """Cut the turns from ``start`` to what the caller heard (``apply_heard``), or, when
        Twilio did not say, take off the words the writer withheld (``drop_unsent``).

        ``end``: where a turn that started after the caller cut in begins (a goodbye, a
        re-prompt). Its words went out after the interrupt and are heard, so the cut stops
        there; they are set aside, and put back after the cut. Returns where a mark at or
        after ``end`` now stands (the cut may have emptied or shortened the message a
        goodbye merged into)."""
        if heard is None and not unsent:
            return unmoved
        tail = split_off(self._messages, self._meta, end) if end is not None else None
        if heard is not None:
            self.apply_heard(start, heard, duration_ms)
        else:
            self.drop_unsent(start, unsent)
        if end is None or tail is None:
            return unmoved
        moved, merged = rejoin(self._messages, self._meta, end, tail)
        for at in merged:
            self._sealed = min(self._sealed, at)
            if self._messages[at]["role"] == "user":    # a prompt put back after one
                self._cap_caller_words(at)
        return moved

    def drop_unsent(self, start: Mark, unsent: str) -> None:
        """Take ``unsent`` (words the relay writer withheld after the turn recorded them) off
        the end of the assistant text since ``start``: with no word from Twilio on what was
        heard, what was sent is what counts."""
        unsent = unsent.strip()
        for at in range(len(self._messages) - 1, start.index - 1, -1):
            message = self._messages[at]
            if message["role"] != "assistant":
                continue
            # the last text of the turn: a tool round's text stands before its toolUse blocks,
            # which never went to the writer
            blocks = message["content"]
            texts = [n for n, block in enumerate(blocks) if _text(block) is not None]
            last = texts[-1] if texts else -1
            said = _text(blocks[last]) if texts else None
            if said is None and at >= start.index:
                continue        # a tool round with no words (a later turn's, at the end)
            if (said is None or last < start.first_block(at)
                    or not unsent or not said.endswith(unsent)):
                return
            kept = said[:len(said) - len(unsent)].rstrip()
            self._sealed = min(self._sealed, at)
            self._messages[at] = {"role": "assistant", "content": [
                *blocks[:last], *([{"text": kept}] if kept else []), *blocks[last + 1:]]}
            self._meta[at].update(generated=_texts(message), interrupted=True)
            self._drop_empty(start.index)
            return

    def _drop_empty(self, start: int) -> None:
        rebuilt, meta = self._messages[:start], self._meta[:start]
        merged: list[int] = []
        for message, facts in zip(self._messages[start:], self._meta[start:], strict=True):
            if not message["content"]:
                continue
            if rebuilt and rebuilt[-1]["role"] == message["role"]:
                rebuilt[-1] = {"role": message["role"],
                               "content": [*rebuilt[-1]["content"], *message["content"]]}
                # the merged message keeps its own store key (at_ms, index), and is stored
                # again under it; its own facts win over the later message's
                meta[-1] = {**facts, **meta[-1]}
                self._sealed = min(self._sealed, len(rebuilt) - 1)
                if message["role"] == "user":
                    merged.append(len(rebuilt) - 1)
            else:
                rebuilt.append(message)
                meta.append(facts)
        self._messages, self._meta = rebuilt, meta
        for at in merged:               # two prompts the cut reply stood between
            self._cap_caller_words(at)

    # ------------------------------------------------------------------ persistence

    def take_sealed(self, *, final: bool = False
                    ) -> list[tuple[int, Message, dict[str, Any]]]:
        """Messages that can no longer change, each returned once with its transcript facts,
        for the write-behind queue. Call it when the caller starts a new turn (a barge-in
        can no longer amend the turn before) and with ``final`` at teardown.

        A stored message that a cut dropped, or moved to another position (its item is keyed
        by at_ms and position), comes first as a tombstone: an empty message with
        ``{"at_ms": ..., "dropped": True}``, written over the old item."""
        end = len(self._messages) if final else max(len(self._messages) - 1, 0)
        # Below ``_sealed`` nothing changed since it was stored (a change lowers it), so only
        # the positions from there on are compared: a turn's start stays O(new messages).
        low = min(self._sealed, len(self._stored_at))
        was = self._stored_at[low:]
        at = [_at_ms(m) for m in self._meta[low:]]
        out: list[tuple[int, Message, dict[str, Any]]] = [
            (self._offset + low + k, {}, {"at_ms": old, "dropped": True})
            for k, old in enumerate(was)
            if old is not None and (k >= len(at) or old != at[k])]
        out += [(self._offset + i, copy.deepcopy(self._messages[i]), dict(self._meta[i]))
                for i in range(self._sealed, end)]
        self._sealed = max(self._sealed, end)
        stored = self._sealed - low
        self._stored_at[low:] = [*at[:stored], *(
            at[k] if k < len(was) and was[k] == at[k] else None
            for k in range(stored, len(at)))]
        return out

    def trim(self, max_messages: int, max_chars: int | None = None) -> int:
        """Forget the oldest sealed messages so at most ``max_messages`` stay in memory, and
        at most ``max_chars`` of content when given (``history_trim``).

        The cut lands on a user message that holds caller words (not tool results), so the
        history still opens with the user and no toolUse loses its result. Returns how many
        messages were dropped. Unsealed messages are never dropped: they are not stored yet.
        """
        sizes = self._sizes.of(self._messages) if max_chars is not None else None
        cut = trim_point(self._messages, sizes, sealed=self._sealed,
                         max_messages=max_messages, max_chars=max_chars)
        if cut:
            del self._messages[:cut], self._meta[:cut]
            self._sealed -= cut
            self._offset += cut
            del self._stored_at[:cut]
        return cut

    # ------------------------------------------------------------------ requests

    def for_request(self) -> tuple[Message, ...]:
        """The history as Converse wants it: a greeting-first history gets a neutral user
        message before it, since a conversation must start with the user.

        The messages are the history's own, shared with earlier and later requests: the
        history never changes one in place, and whoever receives them must not either (the
        backends only serialize them).

        A user message holding a tool round's results and caller words (they merge, roles
        alternating) goes as two (``results_apart``): Bedrock refuses "conversation
        blocks and tool result blocks in the same turn" for some models (Llama 4, Claude 3
        Opus), and the history keeps what happened, the request what every model takes."""
        head = ((_CALL_CONNECTED_MESSAGE,)
                if self._messages and self._messages[0]["role"] == "assistant" else ())
        return (*head, *results_apart(self._messages))

    def last_assistant_text(self) -> str:
        for message in reversed(self._messages):
            if message["role"] == "assistant":
                return _texts(message)
        return ""

    def has_tool_blocks(self) -> bool:
        return any("toolUse" in b or "toolResult" in b
                   for m in self._messages for b in m["content"])


def _at_ms(meta: dict[str, Any]) -> int:
    """The item key's time, as the store writes it (``records.chat_key``)."""
    return int(meta.get("at_ms", 0))


def _texts(message: Message) -> str:
    return " ".join(t for b in message["content"] if (t := _text(b)) is not None)
