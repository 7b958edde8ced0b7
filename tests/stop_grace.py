"""The time a container gets between SIGTERM and SIGKILL, against the stop's budget
(``voiceagent.app.stop_budget``): ECS's StopTimeout (test_deploy) and docker compose's
``stop_grace_period`` (the repository's compose file, test_deploy; a scaffolded project's,
test_scaffold). Past it the kill takes the process mid-stop, with the lines saying which
writes were dropped."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from voiceagent.app.stop_budget import budget_s
from voiceagent.settings import Settings

STOP_MARGIN_S = 5.0      # past the stop budget: the interpreter's exit, a loaded host
COMPOSE_DEFAULT_GRACE = "10s"       # docker's, for a service that sets none
STOP_SETTINGS = ("DRAIN_TIMEOUT_S", "END_GRACE_S", "FLUSH_TIMEOUT_S")
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)")


def compose_duration_s(value: str) -> float:
    """A compose file's duration ("2m", "1m30s", "90s") in seconds."""
    parts = _PART.findall(value)
    if not parts or "".join(number + unit for number, unit in parts) != value:
        raise ValueError(f"not a compose duration: {value!r} (say e.g. 2m or 1m30s)")
    return sum(float(number) * _UNITS[unit] for number, unit in parts)


def compose_stop_needs_s(service: Mapping[str, Any]) -> tuple[float, float]:
    """What a compose service's stop takes, margin included (the stop settings its
    ``environment`` sets, the defaults otherwise), and what its ``stop_grace_period`` gives."""
    environment = service.get("environment") or {}
    settings = Settings.from_env({"VALIDATE_SIGNATURES": "false", **{
        name: str(environment[name]) for name in STOP_SETTINGS if name in environment}})
    grace = str(service.get("stop_grace_period", COMPOSE_DEFAULT_GRACE))
    return budget_s(settings) + STOP_MARGIN_S, compose_duration_s(grace)
