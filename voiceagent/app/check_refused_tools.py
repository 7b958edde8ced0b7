"""``voiceagent check``: a model's refusal of the tools a use case offers, told as the tool to fix.

Bedrock refuses the whole request when one tool's spec breaks its rules or the model's: every
turn of the use case's calls would fail, from the first. How its words name the tool, and what
to change for them, is ``voiceagent.llm.tool_refusals`` (a call's log reads them the same way).

The probe offers the use case's tools first and in their order (it has no history, so no
placeholder specs come before them), so a place is a tool of the use case.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from voiceagent.app.check_steps import Outcome, failed
from voiceagent.llm.tool_refusals import refused_tool


def refused_tool_outcome(name: str, message: str, tools: Sequence[Mapping[str, Any]],
                         use_cases: Sequence[str], said: str) -> Outcome | None:
    """The failure to report when a ValidationException's ``message`` is about the offered
    ``tools`` (the specs of ``use_cases``, in their order), else None. ``said``: Bedrock's
    words as the check quotes them."""
    refusal = refused_tool(message, with_history=False)   # the probe has no history
    if refusal is None:
        return None
    where = f"use case {', '.join(use_cases)}" if use_cases else "MODEL_IDENTIFIER"
    tool, fix = refusal.fix([str(spec.get("name", "?")) for spec in tools], where)
    if tool is None:
        return failed(name, f"refuses the tools of {where} (ValidationException): every turn "
                      "would fail", fix,
                      "model access, IAM and the region are not the cause: Bedrock's words "
                      "are about the tools", said)
    return failed(name, f"refuses tool {tool} of {where} (ValidationException): every turn "
                  "would fail", fix,
                  "model access, IAM and the region are not the cause: Bedrock's words are "
                  "about that tool", said)

