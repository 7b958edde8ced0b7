"""``voiceagent call 127.0.0.1:4000`` (the URL without its scheme) was told to try
http://127.0.0.1:3000, a port the server may not be on: the advice is now the address given,
with the scheme it needs (http for a loopback host, https for a tunnel's or a host's, and
https for a wss:// socket URL)."""

from __future__ import annotations

import pytest
import trio

from voiceagent.app.caller import CallerError, http_url_for, open_call


@pytest.mark.parametrize(("given", "advice"), [
    ("127.0.0.1:4000", "http://127.0.0.1:4000"),
    ("localhost:3001/", "http://localhost:3001/"),
    ("[::1]:3000", "http://[::1]:3000"),
    ("abc.ngrok.app", "https://abc.ngrok.app"),
    ("wss://agent.example.com/relay", "https://agent.example.com/relay"),
    ("ws://127.0.0.1:3000", "http://127.0.0.1:3000"),
    ("", "http://127.0.0.1:3000"),
])
def test_advice_keeps_the_address_given(given: str, advice: str) -> None:
    assert http_url_for(given) == advice


async def test_the_error_says_it() -> None:
    with trio.fail_after(5), pytest.raises(CallerError) as caught:
        async with open_call("127.0.0.1:4000"):
            pass
    assert str(caught.value) == ("'127.0.0.1:4000' is not an http(s) URL; try "
                                 "http://127.0.0.1:4000")
