"""Bedrock's ValidationException quotes the value it refused (the caller's words, a tool's
result); the logged message keeps the path and the constraint and masks the value. The mask
stopped at the first ``' at '``, so a value that held one (a caller's "I'm at 'the station'
at '6'", a tool's JSON) leaked the rest of itself into the log line."""

from __future__ import annotations

import pytest

from voiceagent.llm.bedrock_errors import (
    BedrockHTTPError,
    Failure,
    logged_message,
    without_echoed_values,
)

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


@pytest.mark.parametrize("message", [
    "A conversation must alternate between user and assistant roles.",
    "The text field in the ContentBlock object at messages.3.content.0 is blank.",
    "1 validation error detected: Value '…' at 'messages.1.member.content' failed to satisfy "
    "constraint: Member must have length greater than or equal to 1",
    "messages.3: `tool_use` ids were found without `tool_result` blocks immediately after: "
    "toolu_01AB. Each `tool_use` block must have a corresponding `tool_result` block",
    "Malformed input request: #/messages/0/content/0/text: expected minLength: 1, actual: 0, "
    "please reformat your input and try again.",
    "The format of the value at 'messages.1.content.0.toolUse.input' is invalid.",
])
def test_a_logged_refusal_keeps_the_fields_it_names(message: str) -> None:
    """What the operator needs of a refusal (paths, ids, field names) is not masked as if
    it were the caller's words: only quoted phrases, bare words and JSON are."""
    failure = Failure("ValidationException", message, "rejected", False,
                      BedrockHTTPError(400, "ValidationException", message))
    assert logged_message(failure, content=False) == message


def test_a_key_named_in_brackets_is_kept_and_bracketed_words_are_not() -> None:
    """"extraneous key [cachePoint]" was logged as "extraneous key […]": the one key the
    operator had to find, masked as if it were a word the caller said. A bracketed phrase,
    or a list of quoted values, is still masked."""
    message = ("Malformed input request: #/toolConfig/tools/1: extraneous key [cachePoint] "
               "is not permitted, please reformat your input and try again.")
    failure = Failure("ValidationException", message, "rejected", False,
                      BedrockHTTPError(400, "ValidationException", message))
    assert logged_message(failure, content=False) == message
    message = f"bad values [call me at home] and ['{SECRET}'] at [text]"
    failure = Failure("ValidationException", message, "rejected", False,
                      BedrockHTTPError(400, "ValidationException", message))
    assert logged_message(failure, content=False) == "bad values […] and […] at [text]"
