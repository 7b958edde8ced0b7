"""A use case's TwiML as a call gets it, for tests that look at what Twilio would read."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from voiceagent import twiml
from voiceagent.usecases import UseCase


def relay_document(use_case: UseCase, *, greeting: bool = True) -> str:
    return twiml.connect_relay(ws_url="wss://a.example/relay",
                               action_url="https://a.example/action", use_case=use_case,
                               parameters={"sessionToken": "tok"}, greeting=greeting)


def relay_element(use_case: UseCase, *, greeting: bool = True) -> ET.Element:
    element = ET.fromstring(relay_document(use_case, greeting=greeting)).find(
        "Connect/ConversationRelay")
    assert element is not None
    return element
