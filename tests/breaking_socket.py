"""A socket that breaks mid-reply, and the call the unsent-words tests share on it: the
caller asks for the hours, the writer sends "We open at nine," (the hold keeps the rest),
and the connection breaks while the frame holding "close" is being sent, so "and close at
ten" was taken by the writer but never reached Twilio (test_heard_records,
test_end_tool_edges, test_unsent_words)."""
from __future__ import annotations

from typing import Any

import trio

from tests.call_harness import TestCall, open_test_call
from tests.fakes import FakeLLM, MemorySocket
from voiceagent.llm.base import LLM


class BreaksOnSend(MemorySocket):
    """The connection breaks while the frame holding ``word`` is being sent: the send fails
    a moment after the writer took the frame, as a real socket's does."""

    def __init__(self, word: str) -> None:
        super().__init__()
        self.word = word

    async def send(self, text: str) -> None:
        if self.word in text and not self.hung_up:
            await trio.sleep(0.05)
            self.hung_up = True
        await super().send(text)


async def hours_on_a_socket_that_breaks(llm: FakeLLM | LLM, *, then: str | None = None,
                                        **options: Any) -> tuple[TestCall, str]:
    """The call, ended, and the words Twilio got. ``llm``'s first reply must hold "close";
    ``then``: the caller's next prompt, already buffered by the socket, so the reader takes
    it (and a turn starts) before it sees the close. ``options`` go to open_test_call."""
    async with open_test_call(llm, socket=BreaksOnSend("close"),
                              services_changes={"token_hold_s": 0.5}, **options) as call:
        call.say("hours?")
        await trio.sleep(3)
        sent = "".join(f.get("token", "") for f in call.socket.pending())
        if then is not None:
            call.say(then)
            await trio.sleep(3)
        call.socket.hang_up()
        with trio.fail_after(10):
            await call.done.wait()
    return call, sent
