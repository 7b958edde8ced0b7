"""Anthropic's rule for extended thinking with tools, as Bedrock enforces it, kept by the local
endpoint (``fake_bedrock``): the reasoning a reply sent with its toolUse blocks must come back,
unchanged and first, in that assistant message while its tool round is the conversation's
last; and any signed reasoning block sent back must be one the model signed, unchanged.

A round that ended in words (an earlier turn's) may leave its reasoning out, as Anthropic
allows. A request that turns thinking on (``additionalModelRequestFields.thinking``) must also
start its last tool round's assistant message with reasoning, whoever wrote that round (a
keypad handler's has none), and keep thinking's own limits (``thinking_refusal``); without
it, the endpoint knows thinking is on only for the replies it sent reasoning in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.fake_bedrock_frames import Frame

# Bedrock's words (ValidationException) for a tool round sent back without its thinking
MISSING_THINKING = (
    "The model returned the following errors: messages.{at}.content.0.type: Expected "
    "`thinking` or `redacted_thinking`, but found `{found}`. When `thinking` is enabled, a "
    "final `assistant` message must start with a thinking block (preceeding the lastmost set "
    "of `tool_use` and `tool_result` blocks). We recommend you include thinking blocks from "
    "previous turns. To avoid this requirement, disable `thinking`. Please consult our "
    "documentation at https://docs.claude.com/en/docs/build-with-claude/extended-thinking")
BAD_SIGNATURE = ("The model returned the following errors: messages.{at}.content.{n}: "
                 "Invalid `signature` in `thinking` block")
# Anthropic's words, as Bedrock relays them (ValidationException), for thinking's limits
_ERRORS = "The model returned the following errors: "
LOW_BUDGET = (_ERRORS + "thinking.enabled.budget_tokens: Input should be greater than or "
              "equal to 1024")
BUDGET_OVER_MAX = (_ERRORS + "`max_tokens` must be greater than `thinking.budget_tokens`. Please "
                   "consult our documentation at https://docs.claude.com/en/docs/"
                   "build-with-claude/extended-thinking#max-tokens-and-context-window-size")
TEMPERATURE = _ERRORS + "`temperature` may only be set to 1 when thinking is enabled."
TOP_P = (_ERRORS + "`top_p` must be greater than or equal to 0.95 or unset when thinking is "
         "enabled.")
FORCED_TOOL = _ERRORS + "Thinking may not be enabled when tool_choice forces tool use."
_ANTHROPIC_NAMES = {"text": "text", "toolUse": "tool_use", "toolResult": "tool_result",
                    "reasoningContent": "thinking"}


def reasoning_blocks(frames: Sequence[Frame]) -> tuple[dict[str, Any], ...]:
    """The reasoning blocks ``frames`` stream, in Converse's message form, in order."""
    parts: dict[int, dict[str, str]] = {}
    for frame in frames:
        kind, body = frame.parsed or ("", {})
        delta = body.get("delta", {}) if kind == "contentBlockDelta" else {}
        if "reasoningContent" in delta:
            part = parts.setdefault(body["contentBlockIndex"], {})
            for key, value in delta["reasoningContent"].items():
                part[key] = part.get(key, "") + value if key == "text" else value
    # a reasoningText block always has its text (Converse's ReasoningTextBlock requires it),
    # empty when the model sent none: Claude Opus 4.7 and later omit it by default
    return tuple({"reasoningContent": {"redactedContent": p["redactedContent"]}
                  if "redactedContent" in p else {"reasoningText": {"text": "", **p}}}
                 for p in parts.values())


def _signed(block: Mapping[str, Any]) -> bool:
    reasoning = block.get("reasoningContent")
    return isinstance(reasoning, Mapping) and (
        "redactedContent" in reasoning or "signature" in (reasoning.get("reasoningText") or {}))


def thinking_budget(body: Mapping[str, Any]) -> int | None:
    """The thinking budget ``body`` turns on, or None."""
    fields = body.get("additionalModelRequestFields") or {}
    thinking = fields.get("thinking") if isinstance(fields, Mapping) else None
    if not isinstance(thinking, Mapping) or thinking.get("type") != "enabled":
        return None
    return int(thinking.get("budget_tokens", 0))


def thinking_refusal(body: Mapping[str, Any]) -> str | None:
    """What Bedrock says to a request whose thinking breaks thinking's limits, or None."""
    budget = thinking_budget(body)
    if budget is None:
        return None
    inference = body.get("inferenceConfig") or {}
    choice = (body.get("toolConfig") or {}).get("toolChoice") or {}
    if budget < 1024:
        return LOW_BUDGET
    if inference.get("maxTokens", 0) <= budget:
        return BUDGET_OVER_MAX
    if inference.get("temperature", 1) != 1:
        return TEMPERATURE
    if not 0.95 <= inference.get("topP", 1) <= 1:
        return TOP_P
    if "any" in choice or "tool" in choice:
        return FORCED_TOOL
    return None


class ReasoningRule:
    """What the endpoint sent (``issued``, for each whole reply) and the refusal, if any, of
    a request (``refusal``: Bedrock's message, for an HTTP 400 ValidationException)."""

    def __init__(self) -> None:
        self._with_tool_use: dict[str, tuple[dict[str, Any], ...]] = {}
        self._signed: list[dict[str, Any]] = []

    def issued(self, frames: Sequence[Frame]) -> None:
        blocks = reasoning_blocks(frames)
        self._signed.extend(b for b in blocks if _signed(b))
        for frame in frames:
            kind, body = frame.parsed or ("", {})
            use = body.get("start", {}).get("toolUse") if kind == "contentBlockStart" else None
            if use is not None and blocks:
                self._with_tool_use[use["toolUseId"]] = blocks

    def refusal(self, body: Mapping[str, Any]) -> str | None:
        if (limits := thinking_refusal(body)) is not None:
            return limits
        messages = [m for m in body.get("messages") or () if isinstance(m, Mapping)]
        for at, message in enumerate(messages):
            for n, block in enumerate(message.get("content") or ()):
                if isinstance(block, Mapping) and _signed(block) and block not in self._signed:
                    return BAD_SIGNATURE.format(at=at, n=n)
        # the last tool round: the first assistant message after the caller's last words
        said = [at for at, m in enumerate(messages) if m.get("role") == "user"
                and any("toolResult" not in b and "cachePoint" not in b
                        for b in m.get("content") or ())]
        after = said[-1] + 1 if said else 0
        first = next((at for at in range(after, len(messages))
                      if messages[at].get("role") == "assistant"), None)
        if first is None:
            return None
        content = list(messages[first].get("content") or ())
        wanted = next((self._with_tool_use[b["toolUse"].get("toolUseId")] for b in content
                       if "toolUse" in b
                       and b["toolUse"].get("toolUseId") in self._with_tool_use), None)
        if wanted is None and thinking_budget(body) is not None:
            if content and "reasoningContent" in content[0]:
                return None
        elif wanted is None or tuple(content[:len(wanted)]) == wanted:
            return None
        found = next(iter(content[0]), "?") if content else "?"
        return MISSING_THINKING.format(at=first, found=_ANTHROPIC_NAMES.get(found, found))
