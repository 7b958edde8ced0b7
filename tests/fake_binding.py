"""Preserved thinking, as the local endpoint (``fake_bedrock``) keeps it for the models that
refuse a request over it: a signed reasoning block sent back must follow exactly what it
followed when the model signed it (system, tools and every message before it), or the request
is refused with Bedrock's HTTP 400 ValidationException.

Bedrock's "Preserved thinking" page (claude-messages-thinking-block-binding): "The top-level
system prompt, tools, and all message content before the block are unchanged from the request
that produced it. Claude Fable 5.1 runs this check. Claude Mythos 5.1 records the same
signature but doesn't run it." Anthropic's "What's new in Claude Fable 5.2": the check applies
to every account on Fable 5.2 and Mythos 5.2. Anthropic's "Prefix checks": it "also fails if a
thinking block between others was left out or moved"; ``cache_control`` (Converse's
cachePoint, in system, tools or a message) is no part of it. The refusal's words are
Anthropic's, as Bedrock relays them.

Written apart from the client's ``voiceagent.llm.binding`` (whole prefixes compared, not
hashes), so the two are not the same mistake twice.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from tests.fake_reasoning import reasoning_blocks

if TYPE_CHECKING:
    from tests.fake_bedrock_frames import Frame

BOUND_ELSEWHERE = (
    "The model returned the following errors: messages.{at}.content.{n}: Invalid `signature` "
    "in `thinking` block. The block is bound to a different conversation. Remove the block, "
    "or set `thinking.block_binding.prefix_mismatch_behavior` to \"drop_block\".")
# the models documented to refuse (Fable 5.1 on every account created from August 31, 2026,
# the only kind a new deployment has; Fable and Mythos 5.2 on every account)
CHECKED = re.compile(r"anthropic\.claude-(?:fable-5-[1-9]|mythos-5-[2-9])(?![0-9])")


def _seal(block: Any) -> str | None:
    reasoning = block.get("reasoningContent") if isinstance(block, Mapping) else None
    if not isinstance(reasoning, Mapping):
        return None
    if "redactedContent" in reasoning:
        return str(reasoning["redactedContent"])
    signature = (reasoning.get("reasoningText") or {}).get("signature")
    return str(signature) if signature else None


def _prefix(body: Mapping[str, Any], messages: Sequence[Any]) -> str:
    def content(blocks: Sequence[Any]) -> list[Any]:
        return [b for b in blocks if not (isinstance(b, Mapping) and "cachePoint" in b)]
    tools = (body.get("toolConfig") or {}).get("tools") or ()
    return json.dumps({"system": content(body.get("system") or ()), "tools": content(tools),
                       "messages": [{**m, "content": content(m.get("content") or ())}
                                    for m in messages]}, sort_keys=True)


class BindingRule:
    """The prefix every block the endpoint signed was signed under (``issued``), and the
    refusal of a request that sends one back after something before it changed."""

    def __init__(self) -> None:
        self._signed_under: dict[str, str] = {}

    def asked(self, body: Mapping[str, Any]) -> tuple[dict[str, Any], list[Any]]:
        """What the reply to ``body`` is signed under: its system, tools and messages."""
        return ({"system": body.get("system"), "toolConfig": body.get("toolConfig")},
                list(body.get("messages") or ()))

    def issued(self, asked: tuple[dict[str, Any], list[Any]], frames: Sequence[Frame]) -> None:
        head, messages = asked
        blocks = reasoning_blocks(frames)
        for k, block in enumerate(blocks):
            seal = _seal(block)
            if seal is not None:
                self._signed_under[seal] = _prefix(head, [
                    *messages, {"role": "assistant", "content": list(blocks[:k])}])

    def refusal(self, model_id: str, body: Mapping[str, Any]) -> str | None:
        if not CHECKED.search(model_id):
            return None
        messages = [m for m in body.get("messages") or () if isinstance(m, Mapping)]
        for at, message in enumerate(messages):
            content = list(message.get("content") or ())
            for n, block in enumerate(content):
                seal = _seal(block)
                if seal is None or seal not in self._signed_under:
                    continue        # another rule's (fake_reasoning): a block never signed
                now = _prefix(body, [*messages[:at], {"role": message.get("role"),
                                                      "content": content[:n]}])
                if now != self._signed_under[seal]:
                    return BOUND_ELSEWHERE.format(at=at, n=n)
        return None
