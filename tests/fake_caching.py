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
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

EXTRANEOUS = ("Malformed input request: #/{path}: extraneous key [cachePoint] is not "
              "permitted, please reformat your input and try again.")
NO_CACHING = ("You invoked an unsupported model or your request did not allow prompt "
              "caching")
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
    cache points, or None when it takes them (or the documents do not say)."""
    fields = accepted(model_id)
    if fields is None:
        return None
    for field, path in _cache_points(body):
        if not fields:
            return 403, "AccessDeniedException", NO_CACHING
        if field not in fields:
            return 400, "ValidationException", EXTRANEOUS.format(path=path)
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
