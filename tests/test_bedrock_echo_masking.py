"""Bedrock's ValidationException quotes the value it refused (the caller's words, a tool's
result); the logged message keeps the path and the constraint and masks the value. The mask
stopped at the first ``' at '``, so a value that held one (a caller's "I'm at 'the station'
at '6'", a tool's JSON) leaked the rest of itself into the log line."""

from __future__ import annotations

import pytest

from voiceagent.llm.bedrock_errors import without_echoed_values

SECRET = "SENTINEL-ECHO-8181"
CONSTRAINT = " failed to satisfy constraint: Member must have length less than or equal to 10"


@pytest.mark.parametrize(("value", "path"), [
    (f"plain {SECRET}", "messages.1.member.content"),
    (f"meet me' at 'the station' at '6 {SECRET}", "messages.1.member.content"),
    (f"{{\"where\": \"' at 'x' \", \"who\": \"{SECRET}\"}}",
     "messages.3.member.content.1.member.toolResult"),
])
def test_the_echoed_value_is_masked_whole(value: str, path: str) -> None:
    message = f"1 validation error detected: Value '{value}' at '{path}'{CONSTRAINT}"
    assert without_echoed_values(message) == (
        f"1 validation error detected: Value '…' at '{path}'{CONSTRAINT}")


def test_a_value_without_its_path_is_masked_to_the_end() -> None:
    assert without_echoed_values(f"Value 'cut off {SECRET}' at 'x") == "Value '…'"


def test_of_several_errors_the_last_path_stays_and_no_value() -> None:
    message = (f"2 validation errors detected: Value '{SECRET} a' at 'messages.1.member.content'"
               f"{CONSTRAINT}; Value '{SECRET} b' at 'messages.2.member.content'{CONSTRAINT}")
    assert without_echoed_values(message) == (
        f"2 validation errors detected: Value '…' at 'messages.2.member.content'{CONSTRAINT}")


def test_a_message_without_a_value_is_kept() -> None:
    message = "Malformed input request: messages.0.content is empty, please reformat"
    assert without_echoed_values(message) == message
