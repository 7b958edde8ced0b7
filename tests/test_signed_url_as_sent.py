"""Twilio signs the webhook URL exactly as it was configured, percent-encoding and all, and
the app must check the signature against the request target as it arrived: not the decoded
path (``/tw%69ml`` routes to /twiml), nor a query whose own last character is a '?'."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from tests.server_harness import AUTH_TOKEN, make_settings, running_server
from tests.test_security import FORM, post
from voiceagent.signature import sign


@pytest.mark.parametrize("target", ["/twiml?useCase=my%20case&next=a%2Fb",
                                    "/tw%69ml", "/twiml?question=open%3F&why=what?"])
async def test_a_signed_url_with_encoded_characters_is_checked_as_sent(
        tmp_path: Path, target: str) -> None:
    with trio.fail_after(20):
        async with running_server(make_settings(tmp_path)) as server:
            url = server.url + target
            forged, _ = await post(url, FORM, {"X-Twilio-Signature":
                                               sign(AUTH_TOKEN, url + "x", FORM)})
            status, body = await post(url, FORM, {"X-Twilio-Signature":
                                                  sign(AUTH_TOKEN, url, FORM)})
    assert forged == 403
    assert status == 200
    assert "<ConversationRelay" in body
