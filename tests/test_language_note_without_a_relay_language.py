"""With ``languages`` declared and no ``language``/``ttsLanguage`` under ``relay``, Twilio
speaks its default, en-US, and the server starts from en-US too (``RelayControl``). The note
telling the model which language to answer in is for a call that has moved off that first
language (config/README.md, auto_language); it was added to every request of every call,
English ones included, since "no first language" never matched the language spoken."""

from __future__ import annotations

from pathlib import Path

import trio
import yaml

from tests.fakes import FakeLLM, words
from tests.server_harness import AUTH_TOKEN, make_settings, running_server
from voiceagent.app.caller import open_call


async def test_no_note_until_the_caller_changes_language(tmp_path: Path) -> None:
    folder = tmp_path / "config"
    (folder / "usecases").mkdir(parents=True)
    (folder / "usecases" / "twoLanguages.yaml").write_text(yaml.safe_dump({
        "name": "twoLanguages", "prompt": "You answer the phone.",
        "languages": [{"code": "en-US"}, {"code": "es-ES", "voice": "es-voice"}]}))
    settings = make_settings(tmp_path, CONFIG_DIR=str(folder), STACK_USE_CASE="twoLanguages")
    llm = FakeLLM([words("Hello."), words("Hola.")])
    with trio.fail_after(20):
        async with running_server(settings, llm=llm) as server:
            async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                await call.say("hello", lang="en-US")
                first = await call.read_reply()
                await call.say("hola", lang="es-ES")
                second = await call.read_reply()
                await call.hang_up()
    assert [f for f in first.frames if f["type"] == "language"] == []
    assert {"type": "language", "ttsLanguage": "es-ES"} in second.frames
    assert len(llm.requests[0].system) == 1              # English: the prompt alone
    assert "es-ES" in llm.requests[1].system[-1]         # switched: the note
