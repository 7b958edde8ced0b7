"""What Bedrock refuses in a request's ``toolConfig``, as it answers it (HTTP 400
ValidationException), kept by the local endpoint (``fake_bedrock``) so that a tool spec it
would refuse fails against it as against Bedrock.

Written out here from the documents and the public reports, not taken from voiceagent's own
checks (a test of them against themselves could not fail):

- Converse's API reference (ToolSpecification): ``name`` 1-64 characters of pattern
  ``[a-zA-Z0-9_-]+``; ``description`` at least 1 character. Bedrock's own field checks answer
  "N validation error(s) detected: Value '...' at 'toolConfig.tools.K.member.toolSpec.name'
  failed to satisfy constraint: Member must satisfy regular expression pattern:
  [a-zA-Z0-9_-]+", K counted from 1, the errors joined by "; " (BerriAI/litellm#24668: one
  tool with an empty name and description, three errors at 'toolConfig.tools.1.member').
- ``inputSchema.json`` must be an object schema: "The value at
  toolConfig.tools.0.toolSpec.inputSchema.json.type must be one of the following: object."
  (cognitect-labs/aws-api#272, one tool: counted from 0).
- Claude takes no oneOf / anyOf / allOf at the top of an input schema (other models do):
  "The model returned the following errors: tools.6.custom.input_schema: input_schema does
  not support oneOf, allOf, or anyOf at the top level" (trycua/cua#3303,
  code-yeongyu/senpi#1947: a Qwen model took the same schema).
- Claude on Bedrock takes no integer in an input schema past a 32-bit one (a ``maxLength`` of
  9007199254740991, as MCP servers write): "ValidationException: The model returned the
  following errors: tools.32.custom.input_schema: int too big to convert"
  (tailcallhq/forgecode#3307, Claude Opus 4.7; its fix, #3308, clamps bounds to the i32
  range). Counted from 0, as the other relayed checks.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_NAME = re.compile(r"[a-zA-Z0-9_-]+")
_CONSTRAINT = ("Value '{value}' at 'toolConfig.tools.{place}.member.toolSpec.{field}' failed "
               "to satisfy constraint: Member must {rule}")
NOT_OBJECT = ("The value at toolConfig.tools.{index}.toolSpec.inputSchema.json.type must be "
              "one of the following: object.")
TOP_LEVEL = ("The model returned the following errors: tools.{index}.custom.input_schema: "
             "input_schema does not support oneOf, allOf, or anyOf at the top level")
INT_TOO_BIG = ("The model returned the following errors: tools.{index}.custom.input_schema: "
               "int too big to convert")
_INT32 = range(-2**31, 2**31)
_CLAUDE = re.compile(r"anthropic\.claude-")
_COMBINATORS = ("oneOf", "allOf", "anyOf")


def tool_refusal(model_id: str, body: Mapping[str, Any]) -> str | None:
    """What Bedrock says to ``body`` sent to ``model_id`` for its tool specs, or None when
    it takes them."""
    specs = [(n, entry["toolSpec"]) for n, entry in
             enumerate((body.get("toolConfig") or {}).get("tools") or ())
             if isinstance(entry, Mapping) and isinstance(entry.get("toolSpec"), Mapping)]
    constraints = [problem for n, spec in specs for problem in _field_problems(n, spec)]
    if constraints:
        count = len(constraints)
        return (f"{count} validation error{'s' if count > 1 else ''} detected: "
                + "; ".join(constraints))
    for n, spec in specs:
        schema = (spec.get("inputSchema") or {}).get("json")
        if not isinstance(schema, Mapping) or schema.get("type") != "object":
            return NOT_OBJECT.format(index=n)
    if _CLAUDE.search(model_id):
        for n, spec in specs:
            schema = spec["inputSchema"]["json"]
            if any(key in schema for key in _COMBINATORS):
                return TOP_LEVEL.format(index=n)
            if _holds_a_big_int(schema):
                return INT_TOO_BIG.format(index=n)
    return None


def _holds_a_big_int(value: Any) -> bool:
    """Whether ``value`` holds, at any depth, an integer outside a 32-bit signed one."""
    if isinstance(value, Mapping):
        return any(_holds_a_big_int(inner) for inner in value.values())
    if isinstance(value, list):
        return any(_holds_a_big_int(inner) for inner in value)
    return isinstance(value, int) and not isinstance(value, bool) and value not in _INT32


def _field_problems(index: int, spec: Mapping[str, Any]) -> list[str]:
    name, problems = str(spec.get("name", "")), []
    place = index + 1
    if not _NAME.fullmatch(name):
        problems.append(_CONSTRAINT.format(
            value=name, place=place, field="name",
            rule="satisfy regular expression pattern: [a-zA-Z0-9_-]+"))
    if not name:
        problems.append(_CONSTRAINT.format(value=name, place=place, field="name",
                                           rule="have length greater than or equal to 1"))
    if len(name) > 64:
        problems.append(_CONSTRAINT.format(value=name, place=place, field="name",
                                           rule="have length less than or equal to 64"))
    description = spec.get("description")
    if description is not None and not str(description):
        problems.append(_CONSTRAINT.format(
            value=description, place=place, field="description",
            rule="have length greater than or equal to 1"))
    return problems
