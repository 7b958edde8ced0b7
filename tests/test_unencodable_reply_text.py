"""A reply holding a lone surrogate, through the real server and a real WebSocket.

A model's text, or a tool's message, can hold a lone surrogate (a JSON ``"\\ud83d"`` whose
other half never came). The encoder left it in the frame, and the socket could not encode
the frame as UTF-8: the send failed, which reads as the peer gone, so the writer stopped,
the socket stayed open, and the caller heard nothing more for the rest of the call. The
frame now carries U+FFFD in its place, and the call goes on.
"""

from __future__ import annotations

import json
from pathlib import Path

import trio

from tests.fakes import FakeLLM
from tests.server_harness import AUTH_TOKEN, make_settings, running_server
from voiceagent.app.caller import open_call
from voiceagent.llm.base import StreamEnd, TextDelta
from voiceagent.relay.outbound import End, Play, Text, encode


async def test_a_lone_surrogate_in_a_reply_is_spoken_around_and_the_call_goes_on(
        tmp_path: Path) -> None:
    llm = FakeLLM([[TextDelta("Enjoy your pizza \ud83d"), TextDelta(" today."),
                    StreamEnd("end_turn")],
                   [TextDelta("We are open until ten."), StreamEnd("end_turn")]])
    with trio.fail_after(10):
        async with running_server(make_settings(tmp_path), llm=llm) as server:
            async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                await call.say("thanks")
                assert (await call.read_reply()).text == "Enjoy your pizza \ufffd today."
                await call.say("when do you close?")
                assert (await call.read_reply()).text == "We are open until ten."
                await call.hang_up()
            await server.runtime.calls.wait_idle()
    assert server.runtime.calls.reports[0].writer.frames >= 4


def test_every_outbound_frame_is_valid_utf8() -> None:
    """Each lone surrogate becomes U+FFFD where it stood; nothing else of the frame changes."""
    frames = [encode(message).encode("utf-8")     # what the socket does with it
              for message in (Text("a \udc00 b", last=True),
                              Play("https://x.example/\ud800.mp3"),
                              End(handoff_data='{"summary": "\ud83d"}'))]
    assert [json.loads(frame) for frame in frames] == [
        {"type": "text", "token": "a \ufffd b", "last": True},
        {"type": "play", "source": "https://x.example/\ufffd.mp3"},
        {"type": "end", "handoffData": '{"summary": "\ufffd"}'}]
