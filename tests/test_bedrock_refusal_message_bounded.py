"""Bedrock's message for a request it refused, as the "bedrock call failed" line logs it.

A ValidationException can quote the request it refused: the caller's words, a tool's
arguments. ``without_echoed_values`` masks AWS's ``Value '...' at '<path>'`` only, and the
model providers' own wordings ("The model returned the following errors: ...") reached the
log whole, caller's words and all. Now a quoted span that does not name a field is masked
and the message is cut; LOG_CONTENT=true logs it whole (phone and card numbers masked, as
all content is). Through the local Bedrock endpoint, read as the JSON line production
writes."""

from __future__ import annotations

import json
import logging
import re
import traceback
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from tests.fake_bedrock import (
    FakeBedrock,
    HttpError,
    RecordedRequest,
    Reply,
    exception,
    message_start,
    stream_reply,
)
from tests.test_bedrock import collect, request, user
from voiceagent.errors import ModelRejected
from voiceagent.llm.bedrock import BedrockLLM
from voiceagent.logs import JsonFormatter, _ContextFilter
from voiceagent.settings import Settings

pytestmark = pytest.mark.timeout(60)
OFFLINE = {"AWS_REGION": "us-east-1", "VALIDATE_SIGNATURES": False}

SAID = "my card is 4111 1111 1111 1111 and I live at 12 Elm Street, SENTINEL-SAID-5150"
PHONE = "+14155550123"


def _quoting(request: RecordedRequest) -> str:
    """An Anthropic model's refusal, quoting the user text it was sent and a tool's input."""
    text = request.body["messages"][-1]["content"][0]["text"]
    return (f'The model returned the following errors: messages.0.content.0.text: the text '
            f'"{text}" is not allowed here; tool input {{"callback": "{PHONE}"}} at '
            f"'messages.0.content.1.toolUse.input' was refused. " + "Reformat and retry. " * 20)


def _refused_over_http(request: RecordedRequest) -> Reply:
    return HttpError(400, "ValidationException", _quoting(request))


def _refused_in_stream(request: RecordedRequest) -> Reply:
    return stream_reply(message_start(), exception("validationException", _quoting(request)))


async def _failed_line(llm: BedrockLLM, records: list[logging.LogRecord]) -> dict[str, Any]:
    with trio.fail_after(30), pytest.raises(ModelRejected):
        await collect(llm, request([user(SAID)]))
    (line,) = [r for r in records if r.getMessage() == "bedrock call failed"]
    _ContextFilter().filter(line)
    return json.loads(JsonFormatter().format(line))


@pytest.fixture
async def llm(fake_bedrock: FakeBedrock) -> AsyncIterator[BedrockLLM]:
    backend = BedrockLLM.from_settings(Settings.from_env({}, **OFFLINE),
                                       retry_base_delay_s=0.0)
    yield backend
    await backend.aclose()


@pytest.mark.parametrize("responder", [_refused_over_http, _refused_in_stream])
async def test_a_refusal_quoting_the_callers_words_logs_what_broke_not_them(
        fake_bedrock: FakeBedrock, llm: BedrockLLM, records: list[logging.LogRecord],
        responder: Any) -> None:
    fake_bedrock.responder = responder
    line = await _failed_line(llm, records)
    assert line["code"] == "ValidationException"
    error = line["error"]
    assert "SENTINEL-SAID" not in error
    assert "4111" not in error
    assert "5550123" not in error
    assert error.startswith("The model returned the following errors: messages.0.content.0"
                            '.text: the text "…" is not allowed here; tool input {…} at '
                            "'messages.0.content.1.toolUse.input' was refused.")
    assert len(error) < 300
    assert "LOG_CONTENT=true shows it" in error


async def test_with_log_content_the_refusal_is_logged_whole_numbers_masked(
        fake_bedrock: FakeBedrock, records: list[logging.LogRecord]) -> None:
    fake_bedrock.responder = _refused_over_http
    llm = BedrockLLM.from_settings(
        Settings.from_env({}, **OFFLINE, LOG_CONTENT="true"),
        retry_base_delay_s=0.0)
    try:
        line = await _failed_line(llm, records)
    finally:
        await llm.aclose()
    error = line["error"]
    assert "SENTINEL-SAID-5150" in error
    assert "12 Elm Street" in error
    assert "[card]" in error
    assert "4111" not in error
    assert "+1415***0123" in error
    assert PHONE not in error
    assert error.rstrip().endswith("Reformat and retry.")         # not cut


async def test_the_error_a_turn_sees_holds_the_refusal_bounded(
        fake_bedrock: FakeBedrock, llm: BedrockLLM) -> None:
    """``ModelRejected`` held Bedrock's whole message, 60 KB here (a refusal quoting a long
    history), and chained the HTTP error holding it again: every traceback or error page
    showing it printed it all, card number included. It holds what the LOG_CONTENT line
    has: the start, which says what broke, numbers masked, and the length it had."""
    start = "The model returned the following errors: messages.0.content.0.text: too long "
    fake_bedrock.responder = lambda request: HttpError(
        400, "ValidationException", start + f"{SAID} " * 600)
    with trio.fail_after(30), pytest.raises(ModelRejected) as caught:
        await collect(llm, request([user(SAID)]))
    err = caught.value
    assert err.code == "ValidationException"
    assert str(err).startswith(f"ValidationException: {start}my card is [card] and")
    cut = re.search(r"… \(cut from (\d+) characters\)$", str(err))
    assert cut is not None
    assert int(cut.group(1)) > 30_000
    shown = "".join(traceback.format_exception(err))
    assert len(shown) < 6000
    assert "4111" not in shown
