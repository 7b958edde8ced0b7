"""The conversation of one call, kept valid for Bedrock's Converse API at every step.

One owner (the call's llm_streamer) changes it; everything else gets copies, except model
requests, which share its messages (it never changes a message in place). The rules it keeps
are the model layer's (``voiceagent.llm.converse``): roles alternate and start with the user,
no empty content or blank text, every toolUse is answered by exactly its toolResults in the
next message; and an assistant message records what the caller heard.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from actors import history_cuts
from actors.heard_audio import AudioUses
from actors.history_cuts import Held
from actors.history_span import Mark, next_words, texts_of
from actors.history_trim import MessageSizes, trim_point
from actors.unanswered_words import cap_unanswered
from voiceagent.llm.base import Message
from voiceagent.llm.converse import results_apart

__all__ = ["CALL_CONNECTED", "LOST_RESULT", "History", "Mark"]

CALL_CONNECTED = "(The call has connected.)"   # stands before a greeting: Converse must open
                                               # with a user message
_CALL_CONNECTED_MESSAGE: Message = {"role": "user", "content": [{"text": CALL_CONNECTED}]}
LOST_RESULT = ("The call's connection dropped before this tool's result was recorded; "
               "whether it ran is unknown. Check before repeating it.")


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
        """The caller's words; prompts left unanswered merge, up to a cap
        (``unanswered_words``)."""
        text = text.strip()
        if text:
            self._append("user", [{"text": text}])
            cap_unanswered(self._messages, self._meta)

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

    def _held(self) -> Held:
        return Held(self._messages, self._meta, self._store_again)

    def _store_again(self, at: int) -> None:
        """Message ``at`` changed: it (and every one after it) goes to the store again."""
        self._sealed = min(self._sealed, at)

    def apply_heard(self, start: Mark, heard: str, duration_ms: int | None = None) -> None:
        """Cut the assistant text since ``start`` down to what the caller heard
        (``history_cuts.apply_heard``)."""
        history_cuts.apply_heard(self._held(), start, heard, duration_ms, self.audio_uses)

    def fits(self, start: Mark, heard: str, end: Mark | None = None) -> bool:
        """Whether ``heard`` can be what the caller heard of the words from ``start`` (up to
        ``end``): ``history_cuts.fits``."""
        return history_cuts.fits(self._messages, start, heard, end)

    def record_cut(self, start: Mark, end: Mark | None, *, heard: str | None,
                   unsent: str, duration_ms: int | None = None) -> Callable[[Mark], Mark]:
        """Cut the turns from ``start`` (up to ``end``) to what the caller heard, or take off
        the words the writer withheld (``history_cuts.record_cut``); returns where a mark at
        or after ``end`` now stands."""
        return history_cuts.record_cut(self._held(), start, end, heard=heard, unsent=unsent,
                                       duration_ms=duration_ms, audio_uses=self.audio_uses)

    def drop_unsent(self, start: Mark, unsent: str) -> None:
        """Take ``unsent`` off the end of the assistant text since ``start``
        (``history_cuts.drop_unsent``)."""
        history_cuts.drop_unsent(self._held(), start, unsent)

    # ------------------------------------------------------------------ persistence

    def take_sealed(self, *, final: bool = False
                    ) -> list[tuple[int, Message, dict[str, Any]]]:
        """Messages that can no longer change, each returned once with its transcript facts,
        for the write-behind queue. Call it when the caller starts a new turn (a barge-in
        can no longer amend the turn before) and with ``final`` at teardown.

        A stored message that a cut dropped, or moved to another position (its item is keyed
        by at_ms and position), comes first as a tombstone: an empty message with
        ``{"at_ms": ..., "dropped": True}``, written over the old item.

        The messages themselves, not copies: the history replaces a message, never changes
        one (requests hold them too), and the write-behind queue copies what it keeps (copying
        here as well cost each turn a second deep copy of its messages)."""
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
        out += [(self._offset + i, self._messages[i], dict(self._meta[i]))
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
                return texts_of(message)
        return ""

    def has_tool_blocks(self) -> bool:
        return any("toolUse" in b or "toolResult" in b
                   for m in self._messages for b in m["content"])


def _at_ms(meta: dict[str, Any]) -> int:
    """The item key's time, as the store writes it (``records.chat_key``)."""
    return int(meta.get("at_ms", 0))

