"""A model's text delta holding a lone surrogate (a JSON escape whose other half never came)
becomes U+FFFD where the reply is assembled, so the history, the store (UTF-8) and the next
model request never carry it."""

from __future__ import annotations

import json

from voiceagent.llm.base import LLMEvent, TextDelta
from voiceagent.llm.bedrock_reply import ReplyAssembler


def test_a_lone_surrogate_in_the_model_s_text_is_replaced_where_it_arrives() -> None:
    assembler = ReplyAssembler(started_at=0.0)
    out: list[LLMEvent] = []
    for text in ("Great ", json.loads('"\\ud83d"'), " see you"):
        assembler.feed_event("contentBlockDelta", {"contentBlockIndex": 0,
                                                   "delta": {"text": text}}, out)
    assembler.feed_event("contentBlockStop", {"contentBlockIndex": 0}, out)
    said = "".join(e.text for e in out if isinstance(e, TextDelta))
    assert said == "Great \ufffd see you"
    said.encode("utf-8")                     # what the store and the next request need
