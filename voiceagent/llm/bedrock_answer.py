"""Bedrock's HTTP answer to one ConverseStream request, turned from h11's events into the
reply's items: the status and ``x-amzn-ErrorType`` of the headers, the event frames of a 200
body fed to the reply's assembler, an error answer's body (capped) named at its end.

Apart from the exchange (``bedrock_http.Attempt``), which owns the connection, the reads and
the read deadline: this module only parses what the reads brought, and never touches the
socket. It is on the hot path, one ``take`` per model event, so it is one method and no
helper calls.
"""

from __future__ import annotations

from typing import Any

import h11

from voiceagent.llm.base import LLMEvent
from voiceagent.llm.bedrock_errors import BedrockHTTPError, Failure, classify
from voiceagent.llm.bedrock_reply import ReplyAssembler
from voiceagent.llm.eventstream import FrameDecoder, ReplyError, event_of

MAX_ERROR_BODY = 64 * 1024

Item = LLMEvent | Failure


class Answer:
    """One answer read: ``take`` each h11 event in order. ``complete``: the answer was read to
    its end (a whole reply or an error answer), so its connection may carry another request.
    ``answering``: an event of the model's own output came (not only the headers and
    ``messageStart``, which say the request arrived, not that the model is answering).
    The exchange asks ``complete`` only when ``take`` heard nothing (no callback into it: the
    exchange would hold itself in a cycle, freed by the collector instead of at its end)."""

    def __init__(self, assembler: ReplyAssembler) -> None:
        self._assembler = assembler
        self._decoder = FrameDecoder()
        self._status: int | None = None
        self._error_type = ""
        self._error_body = bytearray()
        self.answering = False
        self.complete = False

    @property
    def status(self) -> int | None:
        """The answer's HTTP status; None until its headers came."""
        return self._status

    def take(self, event: Any, items: list[Item]) -> bool:
        """Add what ``event`` completes of the reply to ``items``. True: the headers or a
        whole event came (the read deadline may move); the answer's end returns False and
        sets ``complete``. Raises ``StreamFault`` or ``ReplyError`` for a broken reply,
        ``ConnectionResetError`` if Bedrock closed the connection."""
        # Data first, by exact type: one per model event (isinstance on h11's ABCs runs abc's)
        if type(event) is h11.Data:
            if self._status == 200:
                out: list[LLMEvent] = []
                frames = self._decoder.feed(bytes(event.data))
                for headers, payload in frames:
                    event_type, body = event_of(headers, payload)   # raises StreamFault
                    self._assembler.feed_event(event_type, body, out)
                    self.answering = self.answering or event_type != "messageStart"
                items.extend(out)
                return bool(frames)
            if len(self._error_body) < MAX_ERROR_BODY:
                self._error_body += event.data
            return False
        if isinstance(event, h11.Response):
            self._status = event.status_code
            for name, value in event.headers:
                if name == b"x-amzn-errortype":
                    self._error_type = value.decode("latin-1").split(":", 1)[0]
            return True
        if isinstance(event, h11.EndOfMessage):
            if self._status != 200:
                # An error answer read to its end leaves the connection as reusable as a
                # reply does (as urllib3 keeps it): closing it made every retry after a 429
                # or a 503 pay a new TCP and TLS handshake, when Bedrock is already slow.
                items.append(classify(BedrockHTTPError.of_answer(
                    self._status or 0, self._error_type, bytes(self._error_body))))
                self.complete = True
                return False
            if self._decoder.pending:
                raise ReplyError("IncompleteStream", "the body ended inside an event frame")
            out = []
            self._assembler.finish(out)
            items.extend(out)
            self.complete = True
            return False
        if isinstance(event, h11.ConnectionClosed):
            raise ConnectionResetError("Bedrock closed the connection")
        return False
