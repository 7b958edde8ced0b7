"""Where each model accepts Converse cache points (prompt caching), as Bedrock answers a request
that puts one where the model takes none, kept by the local endpoint (``fake_bedrock``).

Written out here from the documents, not taken from ``voiceagent.llm.bedrock_converse`` (a
test of that module against itself could not fail):

- Bedrock's "Prompt caching" page (prompt-caching.html, "Supported models, Regions, and
  limits"): Claude 3.7 Sonnet, 3.5 Haiku, Sonnet 4, 4.5 and 4.6, Opus 4, 4.1, 4.5 and 4.6 and
  Haiku 4.5 take cache points in "`system`, `messages`, and `tools`"; Amazon Nova in
  "`system` and `messages`". The page sends the newer models to their model cards, which
  say the same for Claude Opus 4.7 and 4.8, Opus 5 and 5.5, Sonnet 5 and 5.5, Haiku 5.5,
  Fable 5, 5.1 and 5.2 and Mythos 5, 5.1 and 5.2 ("Fields that accept prompt cache
  checkpoints: `system`, `messages`, and `tools`").
- Refusals: a cache point in a field the model's schema lacks, "Malformed input request:
  #/toolConfig/tools/1: extraneous key [cachePoint] is not permitted, please reformat your
  input and try again." (aws/aws-sdk-go-v2#3060; on Nova, earendil-works/pi#2053); a model
  without prompt caching, 403 AccessDeniedException "You invoked an unsupported model or
  your request did not allow prompt caching" (BerriAI/litellm#39210).

A Claude id not listed (a later model) is not judged: the documents say nothing of it yet.

Where a cache point may stand, for every model (``placement_refusal``), as Bedrock answers:

- at most 4 in a request, system, tools and messages together ("Max checkpoints per request:
  4" in the page's table); a fifth, "A maximum of 4 blocks with cache_control may be
  provided. Found 5." (Bike4Mind/bike4mind#2208);
- a block of its own: "ContentBlock object at messages.0.content.0 can only set one of the
  following keys: ..." (envoyproxy/ai-gateway#1717);
- not first in a message (so never alone in one): nothing before it in the same message to
  cache, "There is nothing available to cache" (strands-agents/harness-sdk#3677,
  zed-industries/zed#59436);
- not right after a reasoning block: "Cache point cannot be inserted after reasoning block.
  Please remove the invalid cache point and try again." (anomalyco/opencode#36517);
- not inside a toolResult's content, where the schema has no cachePoint (a validation
  failure, langchain-ai/langchain-aws#499; the words here are the endpoint's own).

What a request reads of the one before (``reads_from``): Claude reads a prefix cached at a
point of the request, or one "up to approximately 20 blocks before" it (Anthropic's "Prompt
caching" page, https://platform.claude.com/docs/en/build-with-claude/prompt-caching; "Bedrock
checks ~20 preceding blocks", aws/agent-toolkit-for-aws), 20 taken here as the exact bound.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

EXTRANEOUS = ("Malformed input request: #/{path}: extraneous key [cachePoint] is not "
              "permitted, please reformat your input and try again.")
NO_CACHING = ("You invoked an unsupported model or your request did not allow prompt "
              "caching")
TOO_MANY = "A maximum of 4 blocks with cache_control may be provided. Found {found}."
NOT_ALONE = ("ContentBlock object at {path} can only set one of the following keys: text, "
             "image, toolUse, toolResult, document, video, cachePoint, reasoningContent, "
             "citationsContent, searchResult.")
NOTHING_BEFORE = "{path}: There is nothing available to cache"
AFTER_REASONING = ("Cache point cannot be inserted after reasoning block. Please remove the "
                   "invalid cache point and try again.")
IN_TOOL_RESULT = "{path}: extraneous key [cachePoint] is not permitted in a toolResult's content"
MOST = 4
LOOKBACK = 20
_ALL = frozenset({"system", "messages", "tools"})
_CLAUDE = re.compile(
    r"anthropic\.claude-(?:3-7-sonnet|3-5-haiku|sonnet-4(?:-[56])?|opus-4(?:-[1-8])?|haiku-4-5"
    r"|(?:opus|sonnet)-5(?:-5)?|haiku-5-5|(?:fable|mythos)-5(?:-[12])?)(?![0-9])")
_NOVA = re.compile(r"amazon\.nova-(?:2-)?(?:micro|lite|pro|premier)")
# documented without prompt caching: older Claude, and the other providers tests send to
_NONE = re.compile(r"anthropic\.claude-(?:v[0-9]|instant|3-(?:haiku|sonnet|opus)|3-5-sonnet)"
                   r"|(?:^|\.)(?:meta|mistral|cohere|ai21|deepseek|openai|qwen)\.")


def accepted(model_id: str) -> frozenset[str] | None:
    """The fields ``model_id`` takes cache points in; None when the documents do not say."""
    if _CLAUDE.search(model_id):
        return _ALL
    if _NOVA.search(model_id):
        return frozenset({"system", "messages"})
    if _NONE.search(model_id):
        return frozenset()
    return None


def caching_refusal(model_id: str, body: Mapping[str, Any]) -> tuple[int, str, str] | None:
    """Bedrock's answer (status, error type, message) to ``body`` sent to ``model_id`` for its
    cache points, or None when it takes them (the fields taken judged only where the
    documents say, the placement for every model)."""
    fields = accepted(model_id)
    for field, path in _cache_points(body) if fields is not None else ():
        if not fields:
            return 403, "AccessDeniedException", NO_CACHING
        if field not in fields:
            return 400, "ValidationException", EXTRANEOUS.format(path=path)
    placement = placement_refusal(body)
    return None if placement is None else (400, "ValidationException", placement)


def placement_refusal(body: Mapping[str, Any]) -> str | None:
    """Bedrock's words refusing ``body`` for where its cache points stand, or None."""
    found = sum(1 for _ in _cache_points(body))
    if found > MOST:
        return TOO_MANY.format(found=found)
    for at, message in enumerate(body.get("messages") or ()):
        content = list(message.get("content") or ()) if isinstance(message, Mapping) else []
        for n, block in enumerate(content):
            path = f"messages.{at}.content.{n}"
            if not isinstance(block, Mapping):
                continue
            if "cachePoint" in block and len(block) > 1:
                return NOT_ALONE.format(path=path)
            result = block.get("toolResult")
            for k, item in enumerate((result or {}).get("content") or ()):
                if isinstance(item, Mapping) and "cachePoint" in item:
                    return IN_TOOL_RESULT.format(path=f"{path}.toolResult.content.{k}")
            if "cachePoint" not in block:
                continue
            if n == 0:
                return NOTHING_BEFORE.format(path=path)
            before = content[n - 1]
            if isinstance(before, Mapping) and "reasoningContent" in before:
                return AFTER_REASONING
    return None


def _cache_points(body: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    for n, block in enumerate(body.get("system") or ()):
        if isinstance(block, Mapping) and "cachePoint" in block:
            yield "system", f"system/{n}"
    for at, message in enumerate(body.get("messages") or ()):
        content = message.get("content") if isinstance(message, Mapping) else None
        for n, block in enumerate(content or ()):
            if isinstance(block, Mapping) and "cachePoint" in block:
                yield "messages", f"messages/{at}/content/{n}"
    tools = (body.get("toolConfig") or {}).get("tools") or ()
    for n, entry in enumerate(tools):
        if isinstance(entry, Mapping) and "cachePoint" in entry:
            yield "tools", f"toolConfig/tools/{n}"


def reads_from(previous: Mapping[str, Any], body: Mapping[str, Any]) -> bool:
    """Whether ``body`` reads the conversation ``previous`` cached at its last message point
    (taken as written): the same blocks up to there, and a point of ``body`` at most
    ``LOOKBACK`` blocks after it."""
    ends = _message_point_ends(previous)
    if not ends:
        return False
    written = ends[-1]
    if _blocks(body)[:written] != _blocks(previous)[:written]:
        return False
    return any(0 <= end - written <= LOOKBACK for end in _message_point_ends(body))


def _blocks(body: Mapping[str, Any]) -> list[tuple[int, Any, Any]]:
    """The conversation's content blocks in order, points left out, each with its message."""
    return [(at, message.get("role"), block)
            for at, message in enumerate(body.get("messages") or ())
            for block in message.get("content") or () if "cachePoint" not in block]


def _message_point_ends(body: Mapping[str, Any]) -> list[int]:
    """For each message point, how many blocks of the conversation stand before it."""
    ends: list[int] = []
    count = 0
    for message in body.get("messages") or ():
        for block in message.get("content") or ():
            if "cachePoint" in block:
                ends.append(count)
            else:
                count += 1
    return ends
