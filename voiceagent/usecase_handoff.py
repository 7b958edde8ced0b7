"""Where a use case's ``liveAgentHandoff`` sends the caller (``handoff``), checked at load:
a mode without its target, or a target Twilio cannot use, loaded, and every handoff then
ended in "no one is available" or a failed dial.

Split from ``usecases``, which re-exports it.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import ValidationInfo, field_validator, model_validator

from voiceagent.usecase_relay import Strict, key_problem, stored

E164 = re.compile(r"\+[1-9][0-9]{1,14}")
WORKFLOW_SID = re.compile(r"WW[0-9a-fA-F]{32}")


class HandoffConfig(Strict):
    """Where ``liveAgentHandoff`` sends the caller (used by ``POST /action``)."""

    mode: Literal["enqueue", "dial", "none"] = "none"
    queue: str | None = None
    workflow_sid: str | None = None
    number: str | None = None
    message: str = "Connecting you with a member of our team."

    @field_validator("number")
    @classmethod
    def _e164(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and not stored(info) and not E164.fullmatch(value):
            raise key_problem((), f"{value!r} is not an E.164 number: write it as +15555550123")
        return value

    @field_validator("workflow_sid")
    @classmethod
    def _workflow(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and not stored(info) and not WORKFLOW_SID.fullmatch(value):
            raise key_problem((), f"{value!r} is not a TaskRouter workflow SID (WW and 32 hex "
                              "digits, from the Twilio console)")
        return value

    @model_validator(mode="after")
    def _has_target(self, info: ValidationInfo) -> HandoffConfig:
        """A mode without its target loaded, and every handoff then ended in "no agent"."""
        if stored(info):
            return self
        if self.mode == "enqueue" and not (self.queue or self.workflow_sid):
            raise key_problem((), "mode enqueue needs queue and/or workflow_sid")
        if self.mode == "dial" and not self.number:
            raise key_problem((), "mode dial needs number (E.164, such as +15555550123)")
        return self
