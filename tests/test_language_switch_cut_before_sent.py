"""The automatic language switch when its ``language`` message never went out. The switch was
recorded as made when it was decided, before the message reached the writer: a prompt that
superseded the turn while the writer was still sending to a slow Twilio cut that send short,
and the call's one record of the language (shared with tools since e61853c) said Twilio spoke
Spanish when it still spoke English. The caller's next Spanish prompt then sent no switch
(the reply went out in the English voice), and a ``switchLanguage`` call to Spanish was taken
for a repeat and not sent either. Found by a review of the day's changes (s17)."""

from __future__ import annotations

from typing import Any

import trio

from tests.call_harness import open_test_call, plain_use_case
from tests.fakes import FakeLLM, SlowAtTheWordSocket, words


def _prompt(text: str, lang: str) -> dict[str, Any]:
    return {"type": "prompt", "voicePrompt": text, "lang": lang, "last": True}


async def test_a_switch_cut_short_is_sent_on_the_next_prompt(autojump_clock: Any) -> None:
    use_case = plain_use_case(
        relay={"language": "en-US", "transcriptionLanguage": "multi",
               "transcriptionProvider": "Deepgram", "speechModel": "nova-3-general"},
        languages=[{"code": "en-US"}, {"code": "es-ES", "voice": "es-voice"}])
    socket = SlowAtTheWordSocket(" there", delay_s=5)
    llm = FakeLLM([words("Hello there, how can I help you today?"), words("Hola, claro.")])
    async with open_test_call(llm, use_case=use_case, socket=socket) as call:
        call.say("hello")
        await trio.sleep(0.5)               # " there" is on its way: the writer waits
        socket.push(_prompt("hola", "es"))  # the switch to Spanish waits behind it ...
        await trio.sleep(2)
        socket.push(_prompt("¿me oyes?", "es"))     # ... and this prompt cuts it short
        await trio.sleep(10)
        frames = socket.pending()
    spanish = next(i for i, f in enumerate(frames) if f.get("token") == "Hola,")
    assert [f for f in frames[:spanish] if f["type"] == "language"] == [
        {"type": "language", "ttsLanguage": "es-ES"}], frames
