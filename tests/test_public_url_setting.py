"""PUBLIC_URL is the base Twilio calls, scheme and host only: the server adds /twiml and
/relay. A new user who pastes the webhook URL (https://abc.ngrok.app/twiml) or keeps the
README's placeholder (https://<your tunnel host>) got a server that started, said
"https://abc.ngrok.app/twiml/twiml" in its `twilio webhooks` line, and answered every call
403; start-up now refuses both with what to put there."""

from __future__ import annotations

import pytest

from voiceagent.errors import SettingsError
from voiceagent.settings import Settings

BASE = {"TWILIO_AUTH_TOKEN": "x", "LLM": "scripted"}


def _problems(public_url: str) -> list[str]:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({**BASE, "PUBLIC_URL": public_url})
    return [p for p in caught.value.problems if p.startswith("PUBLIC_URL: ")]


@pytest.mark.parametrize("public_url", ["https://abc.ngrok.app/twiml",
                                        "https://abc.ngrok.app/relay/",
                                        "https://abc.ngrok.app?x=1"])
def test_a_url_with_a_path_is_refused_saying_base_url_only(public_url: str) -> None:
    (problem,) = _problems(public_url)
    assert "must be the base URL only, scheme and host" in problem
    assert "the server adds /twiml and /relay" in problem


@pytest.mark.parametrize("public_url", ["https://<your tunnel host>", "https://",
                                        "https://https://abc.ngrok.app"])
def test_a_url_without_a_host_name_is_refused_saying_what_goes_there(public_url: str) -> None:
    (problem,) = _problems(public_url)
    assert f"{public_url} has no host name in it" in problem
    assert "your tunnel's or load balancer's host" in problem


@pytest.mark.parametrize(("public_url", "kept"), [
    ("https://abc.ngrok.app/", "https://abc.ngrok.app"),
    ("https://agent.example.com", "https://agent.example.com"),
    ("https://abc.ngrok.app:8443", "https://abc.ngrok.app:8443"),
    ("http://127.0.0.1:3000", "http://127.0.0.1:3000"),
    ("https://[::1]:3000", "https://[::1]:3000")])
def test_a_base_url_is_taken(public_url: str, kept: str) -> None:
    settings = Settings.from_env({**BASE, "PUBLIC_URL": public_url})
    assert settings.public_url == kept
