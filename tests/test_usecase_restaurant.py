"""The restaurant use case's newer tools, as conversations through the real server
(voiceagent.app.testing): confirmation texts, order status, and switching to Spanish."""

from __future__ import annotations

import base64
import json
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import trio

from tests.http_server_support import serving
from voiceagent.app.testing import agent_server
from voiceagent.settings import SOURCE_CONFIG

RESTAURANT = "restaurantOrderingUseCase"
ACCOUNT = "AC" + "1" * 32
SMS_FROM = "+15555550111"
CALLER = "+15555550100"


@contextmanager
def fake_twilio_api() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """Twilio's Messages API on 127.0.0.1: records each POST and answers like Twilio does."""
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
            received.append({"path": self.path, "form": form,
                              "auth": self.headers.get("Authorization", "")})
            sid = "SM" + "a" * 32
            body = json.dumps({"sid": sid, "account_sid": ACCOUNT, "to": form.get("To"),
                               "from": form.get("From"), "body": form.get("Body"),
                               "status": "queued"}).encode()
            self.send_response(201)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            return None

    with serving(Handler) as url:
        yield url, received


async def test_order_then_text_a_confirmation(tmp_path: Path) -> None:
    with fake_twilio_api() as (server_url, received):
        with trio.fail_after(30):
            async with agent_server(SOURCE_CONFIG, use_case=RESTAURANT, data_dir=tmp_path,
                                    TWILIO_ACCOUNT_SID=ACCOUNT, TWILIO_SMS_FROM=SMS_FROM,
                                    TWILIO_API_BASE_URL=server_url) as agent:
                async with agent.call(from_number=CALLER) as call:
                    order = await call.say("I'd like a large pepperoni pizza please")
                    assert order.tool("PlaceOrderFunction").result is not None
                    text = await call.say("can you text me a confirmation?")
                    assert text.text == "Done, I've texted a confirmation to this number."
                    run = text.tool("sendConfirmationSms")
    assert run.status == "success"
    assert run.result == {"status": "sent", "message_sid": "SM" + "a" * 32}
    assert len(received) == 1
    sent = received[0]
    assert sent["path"] == f"/2010-04-01/Accounts/{ACCOUNT}/Messages.json"
    assert sent["form"] == {"To": CALLER, "From": SMS_FROM, "Body": run.input["message"]}
    user, password = base64.b64decode(sent["auth"].split()[1]).decode().split(":", 1)
    assert (user, password) == (ACCOUNT, agent.auth_token)


async def test_text_without_sms_settings_is_a_clear_tool_error(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with agent_server(SOURCE_CONFIG, use_case=RESTAURANT, data_dir=tmp_path,
                                TWILIO_ACCOUNT_SID=ACCOUNT) as agent:
            async with agent.call(from_number=CALLER) as call:
                turn = await call.say("please text me the confirmation")
    run = turn.tool("sendConfirmationSms")
    assert run.status == "error"
    assert run.result is not None
    reason = json.dumps(run.result)
    assert "TWILIO_SMS_FROM" in reason
    assert "not set" in reason
    assert "TWILIO_ACCOUNT_SID" not in reason
    assert turn.text            # the caller hears an apology, not silence


async def test_order_status_finds_this_callers_order(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with agent_server(SOURCE_CONFIG, use_case=RESTAURANT, data_dir=tmp_path) as agent:
            async with agent.call(from_number=CALLER) as first:
                placed = await first.say("I'd like a large pepperoni pizza please")
            number = placed.tool("PlaceOrderFunction").result["order_number"]  # type: ignore[index]
            async with agent.call(from_number=CALLER) as again:
                status = await again.say("what's the status of my order?")
            async with agent.call(from_number="+15555550177") as stranger:
                nothing = await stranger.say("where is my order?")
    run = status.tool("CheckOrderStatus")
    assert run.result is not None
    assert run.result["order_number"] == number
    assert run.result["state"] == "being prepared"
    assert run.result["latest"]["items"] == ["Large Classic Pepperoni", "Caesar Salad"]
    assert status.text == f"Your order number {number} is being prepared."
    assert nothing.tool("CheckOrderStatus").result == {
        "orders": [], "note": "no recent orders from this caller's number",
        "summary": "I don't see any recent orders from this number. Would you like to "
                   "place one?"}
    # its own reply: the order's sentence without its fields said "Your order number is."
    assert nothing.text == ("I don't see any recent orders from this number. Would you like "
                            "to place one?")


async def test_switch_to_spanish(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with agent_server(SOURCE_CONFIG, use_case=RESTAURANT, data_dir=tmp_path) as agent:
            twiml = await agent.post("/twiml", {"CallSid": "CA" + "5" * 32, "From": CALLER,
                                                "To": "+15555550199"})
            async with agent.call(from_number=CALLER) as call:
                turn = await call.say("can we speak Spanish please?")
                hours = await call.say("hola, ¿cuál es su horario?")
    languages = {e.attrib["code"]: e.attrib
                 for e in ET.fromstring(twiml).iter("Language")}
    assert languages["es-US"]["voice"] == "es-US-Neural2-A"
    assert languages["en-US"]["voice"] == "en-US-Journey-O"
    assert {"type": "language", "ttsLanguage": "es-US",
            "transcriptionLanguage": "es-US"} in turn.frames
    assert turn.tool("switchLanguage").input == {"language": "es-US"}
    assert turn.text.startswith("¡Claro!")
    assert hours.text.startswith("Hola.")


async def test_readme_example(tmp_path: Path) -> None:
    """The example in README's "Testing your own use case", verbatim but for the folder."""
    with trio.fail_after(30):
        async with agent_server(SOURCE_CONFIG, use_case="restaurantOrderingUseCase",
                                data_dir=tmp_path) as agent:
            async with agent.call(from_number="+15555550100") as call:
                turn = await call.say("I'd like a large pepperoni pizza please")
                order = turn.tool("PlaceOrderFunction")
                assert order.input["order_type"] == "pickup"
                assert order.result is not None
                assert order.result["status"] == "placed"
                assert "ready for pickup" in turn.text
    assert call.history[-1]["role"] == "assistant"
