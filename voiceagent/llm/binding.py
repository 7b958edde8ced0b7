"""Thinking bound to its conversation ("preserved thinking"), and a history that keeps to it.

On Claude Fable 5.1 and the models after it, a reasoning block is signed with what came
before it: Bedrock's "Preserved thinking" page (claude-messages-thinking-block-binding): "The
API checks that the system prompt, the tool list, and all messages before the block are
unchanged when you replay that block in a later request ... If you edit history between
requests — injecting per-turn reminders, summarizing older turns, or rebuilding the system
prompt — the API rejects the request by default." Anthropic's "Prefix checks" page: a check
"fails if system, tools, or an earlier message changed after Claude produced a block. It also
fails if a thinking block between others was left out or moved"; "A change only invalidates
the thinking already after it"; models: Claude Fable and Mythos 5.1 and 5.2, Claude Opus,
Sonnet and Haiku 5.5. The refusal (400): "Invalid `signature` in `thinking` block. The block
is bound to a different conversation."

A call edits what it sent: the oldest turns are trimmed, an answer the caller cut is cut to
what they heard, a stand-in tool result is answered, the language note in the system prompt
comes and goes (between turns only: ``actors.model_round.system_blocks``, so a tool round's
reasoning, which Claude requires back with its result, is never left out), the tools offered
follow the history. The escape Anthropic documents
(``thinking.block_binding.prefix_mismatch_behavior: "drop_block"`` behind the beta
``thinking-binding-controls-2026-08-01``) has no documented place on Converse, so it is not
sent. Instead each request leaves out the reasoning blocks whose prefix changed since the
model signed them (Anthropic's fix for a trimmed history: "remove the thinking from the kept
turns"), which is what ``drop_block`` does on the service's side: the caller's words and the
tool results all stay, only stale thinking goes. A block this process did not see signed (a
resumed call, one forgotten) counts as changed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from voiceagent.llm.cache_points import content_of, is_cache_point

# Claude with preserved thinking: Fable and Mythos from 5.1, Opus, Sonnet and Haiku from 5.5,
# and every Claude from 6 on (a newer model is taken to keep to it, as the 5.x ones do)
_BINDING = re.compile(r"anthropic\.claude-(?:(?:fable|mythos)-5-[1-9]|(?:opus|sonnet|haiku)"
                      r"-5-[5-9]|[a-z]+-(?:[6-9]|[1-9][0-9]))(?![0-9])")
REMEMBERED = 20_000         # signed blocks remembered by the process (32-byte keys and digests)


@functools.lru_cache(maxsize=64)     # asked per model request: a few ids a process
def binds_thinking(model_id: str) -> bool:
    """Whether ``model_id`` is a Claude model whose reasoning blocks are bound to what came
    before them. An application-inference-profile ARN does not say: False (as before)."""
    return _BINDING.search(model_id) is not None


class ThinkingBindings:
    """The prefix each reasoning block was signed under, by block, for one process: signatures
    are unique, so calls share it. Bounded: the oldest are forgotten first."""

    def __init__(self, remembered: int = REMEMBERED) -> None:
        self._remembered = remembered
        self._prefixes: OrderedDict[bytes, bytes] = OrderedDict()

    def fit(self, body: dict[str, Any]) -> Prefix:
        """Leave out of ``body["messages"]`` (a Converse request's keyword arguments) every
        reasoning block whose prefix is not the one it was signed under; the messages changed
        are new dicts (the history's own are shared, never changed). Returns the request's
        prefix, to remember the blocks its reply signs (``Prefix.signed``)."""
        running = _start(body)
        messages: list[Any] = body.get("messages") or []
        for at, message in enumerate(messages):
            running.update(_item("role", message.get("role")))
            kept: list[Any] = []
            for block in message.get("content") or ():
                if is_cache_point(block):       # a marker, and it moves every request
                    kept.append(block)
                    continue
                key = _key(block)
                if key is not None:
                    signed_under = self._prefixes.get(key)
                    if signed_under != running.copy().digest():
                        continue                # stale: the API would refuse the request
                    self._prefixes.move_to_end(key)
                kept.append(block)
                running.update(_item("block", block))
            if len(kept) != len(message.get("content") or ()) and kept:
                messages[at] = {**message, "content": kept}
        return Prefix(self, running)

    def _remember(self, key: bytes, digest: bytes) -> None:
        self._prefixes[key] = digest
        self._prefixes.move_to_end(key)
        while len(self._prefixes) > self._remembered:
            self._prefixes.popitem(last=False)


class Prefix:
    """A request's prefix, as sent: its reply's reasoning blocks are signed under it."""

    def __init__(self, bindings: ThinkingBindings, running: Any) -> None:
        self._bindings = bindings
        self._running = running

    def signed(self, blocks: Sequence[Mapping[str, Any]]) -> None:
        """The reply's reasoning blocks, in order, first in its assistant message (where the
        history keeps them): each is bound to the request and the blocks before it."""
        running = self._running.copy()
        running.update(_item("role", "assistant"))
        for block in blocks:
            key = _key(block)
            if key is not None:
                self._bindings._remember(key, running.copy().digest())
            running.update(_item("block", block))


def _start(body: Mapping[str, Any]) -> Any:
    """The hash of what precedes the messages: system and tools, cache points aside (they
    are markers, not content: Anthropic leaves ``cache_control`` out of the check), as in
    the messages."""
    running = hashlib.sha256()
    running.update(_item("system", content_of(body.get("system") or ())))
    tools = (body.get("toolConfig") or {}).get("tools") or ()
    running.update(_item("tools", content_of(tools)))
    return running


def _item(kind: str, value: Any) -> bytes:
    text = json.dumps([kind, value], sort_keys=True, ensure_ascii=False, default=str)
    return len(text).to_bytes(8, "big") + text.encode("utf-8", "surrogatepass")


def _key(block: Any) -> bytes | None:
    """A signed reasoning block's identity (its signature, or its encrypted content), or None
    for any other block: only those are checked."""
    reasoning = block.get("reasoningContent") if isinstance(block, Mapping) else None
    if not isinstance(reasoning, Mapping):
        return None
    text = reasoning.get("reasoningText")
    seal = (reasoning.get("redactedContent") if "redactedContent" in reasoning
            else text.get("signature") if isinstance(text, Mapping) else None)
    if not isinstance(seal, str | bytes) or not seal:
        return None
    raw = seal.encode("utf-8", "surrogatepass") if isinstance(seal, str) else seal
    return hashlib.sha256(raw).digest()
