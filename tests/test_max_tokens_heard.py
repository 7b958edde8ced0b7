"""A reply cut by maxTokens, as the caller hears it, through the real server, the real
Bedrock backend and a real WebSocket caller.

The caller heard half a sentence ("We open at nine and we close at") and then nothing: the
turn ended as if the reply were whole, and the caller was left to guess, in silence, until
the idle re-prompt. Now a reply stopped by maxTokens inside a sentence is followed by the
apology a reply cut by a failure gets, and the history keeps what was said. A reply stopped
at a sentence's end is left as it was. A reply whose reasoning took every token said no
word at all: the caller now hears the short apology a wordless round gets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from actors.turn import APOLOGY_CUT, NO_WORDS
from tests.fake_bedrock import (
    RecordedRequest,
    Reply,
    message_end,
    message_start,
    reasoning_events,
    running_fake_bedrock,
    stream_reply,
    text_reply,
)
from tests.server_harness import FIXTURE_CONFIG
from voiceagent.app.testing import agent_server

pytestmark = pytest.mark.timeout(60)

FINE = "Fine, anything else?"
REPLIES: dict[str, Reply] = {
    "cut": text_reply(["We open at nine", " and we close at"], stop_reason="max_tokens"),
    "whole": text_reply(["We open at nine."], stop_reason="max_tokens"),
    "quoted": text_reply(['The sign says "Closed."'], stop_reason="max_tokens"),
    "thinking": stream_reply(message_start(), reasoning_events(0, ["Let me think..."]),
                             message_end("max_tokens")),
}


def respond(request: RecordedRequest) -> Reply:
    content = request.body["messages"][-1]["content"]
    said = next(b["text"] for b in reversed(content) if "text" in b)
    return REPLIES.get(said, text_reply([FINE]))


async def test_a_reply_cut_by_max_tokens_is_not_half_a_sentence_then_silence(
        tmp_path: Path, aws_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    heard: dict[str, str] = {}
    async with running_fake_bedrock(responder=respond) as fake:
        monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", fake.endpoint_url)
        with trio.fail_after(40):
            async with agent_server(FIXTURE_CONFIG, use_case="testUseCase", data_dir=tmp_path,
                                    LLM="bedrock", AWS_REGION="us-east-1") as agent:
                async with agent.call() as call:
                    for said in [*REPLIES, "and then?"]:
                        turn = await call.say(said)
                        assert turn.ended is None
                        heard[said] = turn.text
                    history: Any = call.history
        violations = list(fake.violations)
    assert heard == {"cut": "We open at nine and we close at" + APOLOGY_CUT,
                     "whole": "We open at nine.", "quoted": 'The sign says "Closed."',
                     "thinking": NO_WORDS, "and then?": FINE}
    spoken = [b["text"] for m in history if m["role"] == "assistant"
              for b in m["content"] if "text" in b]
    assert "We open at nine and we close at" + APOLOGY_CUT in spoken
    assert violations == []
