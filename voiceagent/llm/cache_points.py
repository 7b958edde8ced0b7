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
  second after 2,048 tokens", so the minimum is counted per checkpoint). It differs by
  model, eightfold (``messages_min_tokens``): Bedrock's page and its model cards ("Min
  tokens per cache checkpoint"), and Anthropic's "Cache limitations"
  (https://platform.claude.com/docs/en/build-with-claude/prompt-caching#cache-limitations,
  which warns that "the minimum for newly released models" can differ by platform).
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
  the last cacheable block and moves it forward as the conversation grows"). The walk back
  is bounded ("up to approximately 20 blocks before your explicit breakpoint", the same
  page; "Bedrock checks ~20 preceding blocks automatically", AWS's agent toolkit,
  aws/agent-toolkit-for-aws skills/core-skills/amazon-bedrock/references/prompt-caching.md):
  a round adding more blocks than that misses.

Where the moving point goes. A request ends with a user message: the caller's words, or a
tool round's results. Nothing a call does later changes what stands before it and it itself:
a barge-in cuts the assistant's words after it (``actors.history_cuts``), a tool round and
the next turn append after it. So the point goes after its last block; the next round (or
turn) walks back from its own point to this one, a few blocks (one reply, one result). When a
reply is cut to nothing and two prompts merge, the first prompt's block still closes the same
prefix; when the reply is cut to what was heard, the walk back finds the turn's prompt.

When the walk back cannot reach. A tool round of many calls at once (each a toolUse and a
toolResult block) puts more blocks between the two points than Claude walks back over: the
round would read nothing of the conversation and write all of it again, at the write price.
So it keeps the previous request's point as well, on the caller's words before the model's
reply, which reads that prefix (at a tenth of the input price) and writes only the round.
The kept point takes the request's fourth and last checkpoint (system, tools, two here), so
it is kept only near the bound and only with room; kept a little early (``FAR_BLOCKS``), it
costs nothing (its prefix is cached, the walk back would have read it too). Were the round
shorter than the minimum, its own point caches nothing (counted per checkpoint) and the next
turn writes the conversation again: as dear as without the kept point, never dearer.

The point is added to the request only, in a new message dict (the history shares its
messages with every request): the history, the store and the transcripts never see one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from voiceagent.llm.base import Message

CACHE_POINT_TYPE = "default"
MAX_CACHE_POINTS = 4                # per request: system, tools and messages together
MESSAGES_MIN_TOKENS = 4_096         # the largest per-checkpoint minimum of a caching Claude
LOOKBACK_BLOCKS = 20                # how far back Claude looks from a point for a cached prefix
# keep the previous point from this many blocks on: "approximately 20", and a kept point the
# walk back would have reached costs nothing
FAR_BLOCKS = LOOKBACK_BLOCKS - 4
# The minimum tokens per checkpoint by Claude family. 512: Anthropic's list of October 2026
# (Opus 5 and 5.5, Sonnet and Haiku 5.5, Fable and Mythos 5 and 5.1) and the Bedrock cards of
# Opus 5 and Fable 5.1; 1,024, 2,048 and 4,096: Bedrock's table and Anthropic's (3.7 Sonnet,
# 3.5 Haiku, the 4.x models, Sonnet 5). Where the documents differ, the larger: Opus 4.7 and
# 4.8 are 2,048 and 1,024 on Anthropic's page, 4,096 on OpenRouter's
# (https://openrouter.ai/docs/features/prompt-caching; Bedrock's table too for 4.7). A
# Claude not listed (Fable and Mythos 5.2, later ones) gets the largest, 4,096.
_MINIMUMS: tuple[tuple[re.Pattern[str], int], ...] = tuple(
    # neither more digits nor a minor version after the family (a date is no version)
    (re.compile(r"anthropic\.claude-(?:" + family + r")(?![0-9]|-[1-9](?![0-9]))"), tokens)
    for family, tokens in (
        (r"(?:opus|fable|mythos)-5(?:-1)?|(?:opus|sonnet|haiku)-5-5", 512),
        (r"sonnet-5|3-7-sonnet|sonnet-4(?:-[56])?|opus-4(?:-1)?", 1_024),
        (r"3-5-haiku", 2_048),
    ))
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


def messages_min_tokens(model_id: str) -> int:
    """The tokens a conversation needs before its point caches anything on ``model_id`` (a
    caching Claude): below them the point is accepted and ignored, so none is sent."""
    for pattern, tokens in _MINIMUMS:
        if pattern.search(model_id):
            return tokens
    return MESSAGES_MIN_TOKENS


def with_moving_point(messages: Sequence[Message], *, room: int,
                      min_tokens: int = MESSAGES_MIN_TOKENS) -> Sequence[Message]:
    """``messages`` with a cache point after the last block of the last message, when there is
    ``room`` for one (the request's other points counted) and the messages reach
    ``min_tokens``; and one after the previous request's last message too when the walk back
    would not reach it and there is room for both. Else ``messages`` themselves. A message
    that gets a point is a new dict: the others are the history's own, shared, and
    unchanged."""
    if room < 1 or not messages or not _takes_point(messages[-1]):
        return messages
    if estimated_tokens(messages) < min_tokens:
        return messages
    marked = [*messages[:-1], _with_point(messages[-1])]
    previous = _previous_end(messages, min_tokens) if room >= 2 else None
    if previous is not None:
        marked[previous] = _with_point(messages[previous])
    return marked


def _takes_point(message: Message) -> bool:
    content = message.get("content") or []
    return (message.get("role") == "user" and bool(content) and not is_cache_point(content[-1])
            and "reasoningContent" not in content[-1])


def _with_point(message: Message) -> Message:
    return {**message, "content": [*message["content"], cache_point()]}


def _previous_end(messages: Sequence[Message], min_tokens: int) -> int | None:
    """The index of the message the previous request ended with (the one before the model's
    last reply), when it took a point and the blocks since then are too many to walk back
    over; else None."""
    if (len(messages) < 3 or messages[-2].get("role") != "assistant"
            or not _takes_point(messages[-3])):
        return None
    since = sum(len(message.get("content") or ()) for message in messages[-2:])
    if since < FAR_BLOCKS or estimated_tokens(messages[:-2]) < min_tokens:
        return None
    return len(messages) - 3


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
