"""Converse cache points (prompt caching) in the conversation: the one point that moves with a
call's history, and the one way to tell a cache point from content.

What Bedrock does with them (the sources are the documents and the refusals quoted there):

- A cache point caches the whole prefix before it, in the order tools, system, messages; a
  later request that sends the same prefix reads it (Bedrock's "Prompt caching" page,
  https://docs.aws.amazon.com/bedrock/latest/userguide/prompt-caching.html). The cache
  lives 5 minutes, renewed by every hit (same page; repost.aws QUIuMZAYVBQHuVYl6tMu82rQ).
- At most 4 per request, system, tools and messages counted together (the page's table,
  "Max checkpoints per request: 4"; a fifth is refused: "A maximum of 4 blocks with
  cache_control may be provided. Found 5.", Bike4Mind/bike4mind#2208).
- Each model has a minimum of tokens per checkpoint; a point placed before it is accepted
  and caches nothing ("your inference will still succeed, but your prefix won't be
  cached", the page; "the first cache checkpoint can be defined after 1,024 tokens and the
  second after 2,048 tokens", so the minimum is counted per checkpoint). The largest
  minimum of the Claude models that cache is 4,096 tokens (Opus 4.5, Haiku 4.5: Anthropic's
  "Prompt caching" page, https://platform.claude.com/docs/en/build-with-claude/prompt-caching;
  "4,096 tokens for Claude Haiku", strandsagents.com's Bedrock prompt caching page).
- A point is a content block of its own (envoyproxy/ai-gateway#1717: "ContentBlock object
  ... can only set one of the following keys"), in a message's content, never inside a
  toolResult's (langchain-ai/langchain-aws#499), never first in a message ("There is nothing
  available to cache", strands-agents/harness-sdk#3677; so never a message's only block,
  zed-industries/zed#59436), never right after a reasoning block ("Cache point cannot be
  inserted after reasoning block", anomalyco/opencode#36517).
- Claude looks for an earlier write itself: from a point it walks back about 20 content
  blocks to the longest prefix already cached (Anthropic's page, "automatic prefix
  checking"; Bedrock's "simplified cache management" is for Claude models only, so Nova,
  which documents no such look-back, gets no moving point: it would write and never read).
  Anthropic's way for a conversation is that one point, on the last block of the last
  message, moving forward every turn ("Automatic caching ... applies the cache breakpoint to
  the last cacheable block and moves it forward as the conversation grows").

Where the moving point goes. A request ends with a user message: the caller's words, or a
tool round's results. Nothing a call does later changes what stands before it and it itself:
a barge-in cuts the assistant's words after it (``actors.history_cuts``), a tool round and
the next turn append after it. So the point goes after its last block; the next round (or
turn) walks back from its own point to this one, a few blocks (one reply, one result). When a
reply is cut to nothing and two prompts merge, the first prompt's block still closes the same
prefix; when the reply is cut to what was heard, the walk back finds the turn's prompt.

The point is added to the request only, in a new message dict (the history shares its
messages with every request): the history, the store and the transcripts never see one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from voiceagent.llm.base import Message

CACHE_POINT_TYPE = "default"
MAX_CACHE_POINTS = 4                # per request: system, tools and messages together
MESSAGES_MIN_TOKENS = 4_096         # the largest per-checkpoint minimum of a caching Claude
# Anthropic: a Claude token is about 3.5 English characters; fewer in other languages and
# in JSON. Four characters a token counts fewer tokens than there are (see estimated_tokens).
CHARS_PER_TOKEN = 4


def cache_point() -> dict[str, Any]:
    return {"cachePoint": {"type": CACHE_POINT_TYPE}}


def is_cache_point(block: Any) -> bool:
    """Whether ``block`` (of system, tools or a message's content) is a cache point: a marker,
    not content (Anthropic leaves ``cache_control`` out of the prefix it checks)."""
    return isinstance(block, Mapping) and "cachePoint" in block


def content_of(blocks: Iterable[Any]) -> list[Any]:
    """``blocks`` without their cache points."""
    return [block for block in blocks if not is_cache_point(block)]


def count_cache_points(blocks: Iterable[Any]) -> int:
    return sum(1 for block in blocks if is_cache_point(block))


def with_moving_point(messages: Sequence[Message], *, room: int) -> Sequence[Message]:
    """``messages`` with a cache point after the last block of the last message, when there is
    ``room`` for one (the request's other points counted) and the messages reach the
    minimum; else ``messages`` themselves. The last message is a new dict: the others are
    the history's own, shared, and unchanged."""
    if room < 1 or not messages:
        return messages
    last = messages[-1]
    content = last.get("content") or []
    if (last.get("role") != "user" or not content or is_cache_point(content[-1])
            or "reasoningContent" in content[-1]):
        return messages
    if estimated_tokens(messages) < MESSAGES_MIN_TOKENS:
        return messages
    return [*messages[:-1], {**last, "content": [*content, cache_point()]}]


def estimated_tokens(messages: Sequence[Message]) -> int:
    """Fewer tokens than ``messages`` hold, so a point is placed only once they reach the
    minimum: their characters of text, tool input and tool results (no reasoning, no
    structure) at four a token, where Claude's English is about 3.5 (and other languages and
    JSON fewer still). Were it ever more, the cost is a point Bedrock accepts and ignores
    ("inference will still succeed"), never a refused request. Per request, not per token."""
    chars = 0
    for message in messages:
        for block in message.get("content") or ():
            if not isinstance(block, Mapping):
                continue
            if isinstance(block.get("text"), str):
                chars += len(block["text"])
            elif isinstance(block.get("toolUse"), Mapping):
                chars += len(_json(block["toolUse"].get("input")))
            elif isinstance(block.get("toolResult"), Mapping):
                for item in block["toolResult"].get("content") or ():
                    if isinstance(item, Mapping):
                        chars += (len(item["text"]) if isinstance(item.get("text"), str)
                                  else len(_json(item.get("json"))))
    return chars // CHARS_PER_TOKEN


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
