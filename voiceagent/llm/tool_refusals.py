"""Bedrock's refusal of the tools a request offers, read as the tool to fix and what to change.

Bedrock refuses the whole request when one tool's spec breaks its rules or the model's, even a
tool the model was never going to call: every turn of the use case's calls fails, from the
first, and trying again cannot help. ``voiceagent check`` reads its words to fail the model's
line; a call reads the same words to log the tool once per episode. Its words name the tool
by its place in ``toolConfig.tools``, counted three ways:

- its own field checks count from 1, and quote the value (masked before it reaches us):
  "Value '…' at 'toolConfig.tools.1.member.toolSpec.name' failed to satisfy constraint: Member
  must satisfy regular expression pattern: [a-zA-Z0-9_-]+" (BerriAI/litellm#24668, one tool);
- its schema checks count from 0: "The value at toolConfig.tools.0.toolSpec.inputSchema.json.type
  must be one of the following: object." (cognitect-labs/aws-api#272, one tool);
- the model's own checks, relayed, count from 0: "The model returned the following errors:
  tools.6.custom.input_schema: input_schema does not support oneOf, allOf, or anyOf at the top
  level" (Claude; trycua/cua#3303), or "tools.32.custom.input_schema: int too big to convert"
  (a bound past a 32-bit integer; tailcallhq/forgecode#3307).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

# (where a place is written, what it counts from), the most specific first
_PLACES = ((re.compile(r"toolConfig\.tools\.(\d+)\.member\b"), 1),
           (re.compile(r"toolConfig[./]tools[./](\d+)\b"), 0),
           (re.compile(r"(?<![\w.])tools\.(\d+)\.custom\b"), 0))
_ABOUT_A_SPEC = re.compile(r"\b(?:toolSpec|inputSchema|input_schema)\b")
_TOOL_CONFIG = re.compile(r"\btoolConfig\b")
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
GENERAL_HINT = ("change its input_schema to what the model takes, as Bedrock's words say "
                "(Bedrock's JSON Schema support is a subset of JSON Schema)")
CHECK_ADVICE = ("run `voiceagent check`: it asks each model with each use case's tools, as "
                "calls offer them, and names every tool a model refuses")


@dataclass(frozen=True, slots=True)
class ToolRefusal:
    place: int | None               # the tool's index in toolConfig.tools, from 0, if named
    hint: str                       # what to change in that tool

    def fix(self, names: Sequence[str], where: str) -> tuple[str | None, str]:
        """The tool refused, from ``names`` (the offered tools' names in toolConfig order),
        and what to change in ``where``: said alike by ``voiceagent check`` and a call's log.
        No name when the words give no place among ``names``."""
        if self.place is None or not 0 <= self.place < len(names):
            return None, (f"find the tool in {where}'s tools from Bedrock's words (a place in "
                          "toolConfig.tools is counted from 0, or from 1 before .member), "
                          f"then: {self.hint}")
        tool = names[self.place]
        return tool, f"fix tools[{self.place}] ({tool}) in {where}: {self.hint}"


def refused_tool(message: str, *, with_history: bool) -> ToolRefusal | None:
    """What a ValidationException's ``message`` says of the offered tools, or None when it
    is about something else. ``with_history``: the request held a conversation, whose tool
    blocks Bedrock's words about ``toolConfig`` alone may be about ("The toolConfig field
    must be defined when using toolUse and toolResult content blocks"): then only a tool's
    place or its spec's fields make the words about a tool."""
    place = _place(message)
    if "cachePoint" in message:     # a cache point is prompt caching's, not a tool's
        return None
    if (place is None and not _ABOUT_A_SPEC.search(message)
            and (with_history or not _TOOL_CONFIG.search(message))):
        return None
    hint = next((text for words, text in _HINTS if words.search(message)), GENERAL_HINT)
    return ToolRefusal(place, hint)


def _place(message: str) -> int | None:
    """The refused tool's index, from 0, as the first place the words name."""
    for pattern, base in _PLACES:
        if (match := pattern.search(message)) is not None:
            return int(match[1]) - base
    return None
