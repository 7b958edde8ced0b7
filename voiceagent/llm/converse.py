"""Converse's rules for a conversation: every way a history makes ConverseStream refuse it.

They belong to the model layer: the Bedrock backend checks a request with them before it is
sent (and logs a history that breaks them by shape), the scripted model refuses what Bedrock
would, the call's history keeps them by construction, and the tests' local endpoint checks
every request it receives. The triggers are the ValidationExceptions measured against the
service: roles alternate and start with the user, no empty content or blank text, every
toolUse answered by exactly its toolResults in the next message, tool blocks only with a
toolConfig, no trailing whitespace at the end of a final assistant message, reasoning only in
an assistant message and in one of its two shapes (whether a model wants its reasoning back
is its own rule: the tests' endpoint keeps Anthropic's). A request's cache points are
markers, no block of the conversation (where they may stand: ``cache_points``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from voiceagent.llm.base import Message

TOOL_USE_ID = re.compile(r"^[a-zA-Z0-9_.:-]{1,64}$")


def converse_problems(messages: Sequence[Message], *, tools_configured: bool = True
                      ) -> list[str]:
    """Every way ``messages`` would make ConverseStream raise a ValidationException.

    Empty list = valid. Used by the model backends before sending, by the property tests, and
    by the fake Bedrock endpoint on every request it receives.
    """
    problems: list[str] = []
    if not messages:
        return ["messages: empty"]
    if messages[0].get("role") != "user":
        problems.append("messages[0]: a conversation must start with a user message")
    pending_uses: list[str] = []
    seen_uses: set[str] = set()
    for i, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        where = f"messages[{i}]"
        if role not in ("user", "assistant"):
            problems.append(f"{where}: role {role!r} is not user or assistant")
        if i and messages[i - 1].get("role") == role:
            problems.append(f"{where}: roles must alternate between user and assistant")
        if not isinstance(content, list) or not content:
            problems.append(f"{where}: content is empty")
            content = []
        uses: list[str] = []
        results: list[str] = []
        for j, block in enumerate(content):
            problems.extend(_block_problems(f"{where}.content[{j}]", block, role, uses, results))
        marks = sum(1 for block in content if isinstance(block, dict) and "cachePoint" in block)
        if results and len(results) < len(content) - marks:
            problems.append(f"{where}: toolResult blocks and other blocks in one user turn "
                            "(some models refuse it: put the results in a turn of their own)")
        if pending_uses and sorted(results) != sorted(pending_uses):
            problems.append(f"{where}: expected toolResult blocks for {sorted(pending_uses)}, "
                            f"got {sorted(results)}")
        elif results and not pending_uses:
            problems.append(f"{where}: toolResult blocks without toolUse in the previous turn")
        pending_uses = uses
        for use in uses:
            if use in seen_uses:
                problems.append(f"{where}: toolUse id {use!r} used before: ids must be unique")
            seen_uses.add(use)
        if (tool_blocks := uses or results) and not tools_configured:
            problems.append(f"{where}: tool blocks {tool_blocks} need a toolConfig")
    if pending_uses:
        problems.append(f"messages[{len(messages) - 1}]: toolUse {pending_uses} has no result")
    last = messages[-1]
    if last.get("role") == "assistant":
        texts = [b["text"] for b in last.get("content", []) if isinstance(b.get("text"), str)]
        if texts and texts[-1] != texts[-1].rstrip():
            problems.append("final assistant content cannot end with trailing whitespace")
    return problems


def _block_problems(where: str, block: Any, role: Any, uses: list[str],
                    results: list[str]) -> list[str]:
    if not isinstance(block, dict) or len(block) != 1:
        return [f"{where}: a block has exactly one member"]
    (kind, value), = block.items()
    if kind == "text":
        if not isinstance(value, str) or not value.strip():
            return [f"{where}: text is blank"]
        return []
    if kind == "toolUse":
        if role != "assistant":
            return [f"{where}: toolUse outside an assistant message"]
        tool_id = value.get("toolUseId", "")
        uses.append(tool_id)
        problems = [] if TOOL_USE_ID.match(tool_id) else [f"{where}: bad toolUseId"]
        if not isinstance(value.get("input"), dict):
            problems.append(f"{where}: toolUse input must be an object")
        return problems
    if kind == "toolResult":
        if role != "user":
            return [f"{where}: toolResult outside a user message"]
        results.append(value.get("toolUseId", ""))
        content = value.get("content") or []
        problems = []
        if value.get("status") == "error" and not content:
            problems.append(f"{where}: an error toolResult needs content")
        for item in content:
            if "json" in item and not isinstance(item["json"], dict):
                problems.append(f"{where}: toolResult json must be an object")
            if "text" in item and not str(item["text"]).strip():
                problems.append(f"{where}: toolResult text is blank")
        return problems
    if kind == "reasoningContent":
        return _reasoning_problems(where, value, role)
    if kind == "cachePoint":        # a marker; where it may stand is prompt caching's rule
        return [] if value == {"type": "default"} else [f"{where}: cachePoint type default"]
    return [f"{where}: unexpected block {kind!r}"]


def _reasoning_problems(where: str, value: Any, role: Any) -> list[str]:
    if role != "assistant":
        return [f"{where}: reasoningContent outside an assistant message"]
    if not isinstance(value, dict) or len(value) != 1:
        return [f"{where}: reasoningContent has exactly one of reasoningText, redactedContent"]
    (shape, body), = value.items()
    if shape == "redactedContent":
        return [] if isinstance(body, str) and body else [
            f"{where}: redactedContent must be the blob (base64)"]
    if shape != "reasoningText" or not isinstance(body, dict):
        return [f"{where}: reasoningContent has exactly one of reasoningText, redactedContent"]
    if not isinstance(body.get("text"), str) or not isinstance(body.get("signature", ""), str):
        return [f"{where}: reasoningText needs a text (and a signature, if any) as strings"]
    return []


# stands between a tool round's results and caller words that came before any reply to them
# (the reply cut before its first word, or empty)
NO_REPLY = "..."
_NO_REPLY_MESSAGE: Message = {"role": "assistant", "content": [{"text": NO_REPLY}]}


def results_apart(messages: Sequence[Message]) -> Sequence[Message]:
    """``messages`` with each user message that holds toolResult blocks and other blocks
    sent as two, ``NO_REPLY`` between them (the rule ``converse_problems`` checks). The
    same sequence when none does, which is nearly always: no copy per request."""
    if not any(_mixes_results(m) for m in messages):
        return messages
    return [part for message in messages for part in _apart(message)]


def _mixes_results(message: Message) -> bool:
    content = message["content"]
    return (message["role"] == "user" and len(content) > 1
            and any("toolResult" in b for b in content)
            and not all("toolResult" in b for b in content))


def _apart(message: Message) -> tuple[Message, ...]:
    if not _mixes_results(message):
        return (message,)
    content = message["content"]
    return ({"role": "user", "content": [b for b in content if "toolResult" in b]},
            _NO_REPLY_MESSAGE,
            {"role": "user", "content": [b for b in content if "toolResult" not in b]})
