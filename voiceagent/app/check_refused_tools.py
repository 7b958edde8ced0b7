"""``voiceagent check``: a model's refusal of the tools a use case offers, told as the tool to fix.

Bedrock refuses the whole request when one tool's spec breaks its rules or the model's, even a
tool the model was never going to call: every turn of the use case's calls fails, from the
first. Its words name the tool by its place in ``toolConfig.tools``, counted three ways:

- its own field checks count from 1, and quote the value (masked before it reaches us):
  "Value '…' at 'toolConfig.tools.1.member.toolSpec.name' failed to satisfy constraint: Member
  must satisfy regular expression pattern: [a-zA-Z0-9_-]+" (BerriAI/litellm#24668, one tool);
- its schema checks count from 0: "The value at toolConfig.tools.0.toolSpec.inputSchema.json.type
  must be one of the following: object." (cognitect-labs/aws-api#272, one tool);
- the model's own checks, relayed, count from 0: "The model returned the following errors:
  tools.6.custom.input_schema: input_schema does not support oneOf, allOf, or anyOf at the top
  level" (Claude; trycua/cua#3303).

The probe offers the use case's tools first and in their order (it has no history, so no
placeholder specs come before them), so a place is a tool of the use case.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from voiceagent.app.check_steps import Outcome, failed

# (where a place is written, what it counts from), the most specific first
_PLACES = ((re.compile(r"toolConfig\.tools\.(\d+)\.member\b"), 1),
           (re.compile(r"toolConfig[./]tools[./](\d+)\b"), 0),
           (re.compile(r"(?<![\w.])tools\.(\d+)\.custom\b"), 0))
_ABOUT_TOOLS = re.compile(r"\b(?:toolConfig|toolSpec|inputSchema|input_schema)\b")
# what Bedrock's or the model's words are about, and what to change for it
_HINTS = (
    (re.compile(r"oneOf, allOf, or anyOf at the top level", re.IGNORECASE),
     "take oneOf / anyOf / allOf off the top of its input_schema (Claude takes none there): "
     "describe the alternatives in its description and check them in the tool's code, or "
     "put them under one property"),
    (re.compile(r"toolSpec\.name\b"),
     "tool names are 1-64 of a-z A-Z 0-9 _ - (the tool's code is registered under the "
     "same name)"),
    (re.compile(r"toolSpec\.description\b"), "give it a description of at least one character"),
    (re.compile(r"one of the following: object", re.IGNORECASE),
     'its input_schema must be {"type": "object", ...}'),
    # a bound past a 32-bit integer (maxLength: 9999999999), forgecode#3307 on Claude
    (re.compile(r"int too big", re.IGNORECASE),
     "a number in its input_schema (maximum, maxLength, maxItems...) is beyond 2147483647: "
     "lower it or remove it"),
)
_GENERAL = ("change its input_schema to what the model takes, as Bedrock's words below say "
            "(Bedrock's JSON Schema support is a subset of JSON Schema)")


def refused_tool_outcome(name: str, message: str, tools: Sequence[Mapping[str, Any]],
                         use_cases: Sequence[str], said: str) -> Outcome | None:
    """The failure to report when a ValidationException's ``message`` is about the offered
    ``tools`` (the specs of ``use_cases``, in their order), else None. ``said``: Bedrock's
    words as the check quotes them."""
    if "cachePoint" in message or (not _ABOUT_TOOLS.search(message)
                                   and _place(message) is None):
        return None                 # a cache point is prompt caching's, not a tool's
    where = f"use case {', '.join(use_cases)}" if use_cases else "MODEL_IDENTIFIER"
    hint = next((text for words, text in _HINTS if words.search(message)), _GENERAL)
    place = _place(message)
    if place is None or not 0 <= place < len(tools):
        return failed(name, f"refuses the tools of {where} (ValidationException): every turn "
                      "would fail",
                      f"find the tool in {where}'s tools from Bedrock's words (a place in "
                      "toolConfig.tools is counted from 0, or from 1 before .member), "
                      f"then: {hint}",
                      "model access, IAM and the region are not the cause: Bedrock's words "
                      "are about the tools", said)
    tool = str(tools[place].get("name", "?"))
    return failed(name, f"refuses tool {tool} of {where} (ValidationException): every turn "
                  "would fail",
                  f"fix tools[{place}] ({tool}) in {where}: {hint}",
                  "model access, IAM and the region are not the cause: Bedrock's words are "
                  "about that tool", said)


def _place(message: str) -> int | None:
    """The refused tool's index, from 0, as the first place the words name."""
    for pattern, base in _PLACES:
        if (match := pattern.search(message)) is not None:
            return int(match[1]) - base
    return None
