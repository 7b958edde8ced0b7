"""A use case an older release stored (its ``voiceagent`` attribute) is served as it was
after an upgrade that refuses some of its settings at ``config load``: a handoff target not
in E.164 or missing, a DTMF terminator that is no key, a handler input without a tool, a
scripted rule with no answer, a guardrail version without its id. Refused on read, the
attribute was dropped for the sample attributes, and every call lost its handoff, DTMF and
model settings with no more than a warning."""

from __future__ import annotations

from typing import Any

import pytest

from voiceagent.errors import ConfigError
from voiceagent.store import config_records, records
from voiceagent.usecases import UseCase, parse_model

LOADED_BY_AN_OLDER_RELEASE: list[dict[str, Any]] = [
    {"handoff": {"mode": "dial", "number": "555-555-0123"}},
    {"handoff": {"mode": "enqueue"}},
    {"dtmf": {"terminator": ""}},
    {"dtmf": {"handlers": {"1": {"reply": "Our hours.", "input": {"day": "today"}}}}},
    {"scripted": {"rules": [{"match": "hi"}]}},
    {"model_options": {"guardrail_version": "1"}},
]


def _stored(change: dict[str, Any]) -> records.Item:
    item = config_records.use_case_item(UseCase(name="desk", prompt="Answer briefly."))
    full = dict(item["voiceagent"])
    for key, value in change.items():
        full[key] = {**full[key], **value}
    item["voiceagent"] = full
    return item


@pytest.mark.parametrize("change", LOADED_BY_AN_OLDER_RELEASE)
def test_a_stored_use_case_keeps_its_settings(change: dict[str, Any],
                                              caplog: pytest.LogCaptureFixture) -> None:
    served = config_records.use_case_from_item(_stored(change)).model_dump(mode="json")
    assert _within(change, served)
    assert "unreadable" not in caplog.text


def _within(part: Any, whole: Any) -> bool:
    """Every value of ``part`` is in ``whole`` at the same place."""
    if isinstance(part, dict):
        return isinstance(whole, dict) and all(
            key in whole and _within(value, whole[key]) for key, value in part.items())
    if isinstance(part, list):
        return isinstance(whole, list) and len(part) == len(whole) and all(
            _within(p, w) for p, w in zip(part, whole, strict=True))
    return bool(part == whole)


@pytest.mark.parametrize("change", LOADED_BY_AN_OLDER_RELEASE)
def test_the_same_settings_in_a_file_are_refused(change: dict[str, Any]) -> None:
    """Refused for the setting changed: the use case around it loads from a file as it is."""
    assert parse_model(UseCase, _stored({})["voiceagent"], "config/desk.yaml").name == "desk"
    with pytest.raises(ConfigError) as caught:
        parse_model(UseCase, _stored(change)["voiceagent"], "config/desk.yaml")
    (changed,) = change
    assert caught.value.key_path.split(".")[0] == changed
