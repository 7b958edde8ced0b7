"""A local fake of the two reads of Twilio's REST API that ``voiceagent check`` makes.

``GET /2010-04-01/Accounts/{sid}.json`` answers the account for the right basic auth (account
SID and auth token) and 401 with Twilio's error 20003 otherwise; ``GET /2010-04-01/Accounts/
{sid}/IncomingPhoneNumbers.json?PhoneNumber=...`` lists the account's numbers, filtered by
``PhoneNumber`` as Twilio filters them. HTTP/1.1 with keep-alive on 127.0.0.1.

    async with running_fake_twilio_api(ACCOUNT, TOKEN) as twilio:
        twilio.add_number("+15551234567", voice_url="https://agent.example.com/twiml")
        env["TWILIO_API_BASE_URL"] = twilio.url
"""

from __future__ import annotations

import base64
import http
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import trio

from tests.http_requests import receive_request

_ACCOUNT = re.compile(r"^/2010-04-01/Accounts/(?P<sid>AC\w+)\.json$")
_NUMBERS = re.compile(r"^/2010-04-01/Accounts/(?P<sid>AC\w+)/IncomingPhoneNumbers\.json$")
UNAUTHORIZED = {"code": 20003, "message": "Authenticate",
                "more_info": "https://www.twilio.com/docs/errors/20003", "status": 401}


@dataclass(eq=False)
class FakeTwilioApi:
    """One account with its numbers. ``requests`` records (method, target, basic-auth user)
    of every request, whatever it was answered."""

    account_sid: str
    auth_token: str
    status: str = "active"
    port: int = 0
    numbers: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)

    @property
    def url(self) -> str:
        """For ``TWILIO_API_BASE_URL``."""
        return f"http://127.0.0.1:{self.port}"

    def add_number(self, phone_number: str, *, voice_url: str, voice_method: str = "POST",
                   voice_application_sid: str | None = None) -> None:
        self.numbers[phone_number] = {
            "sid": f"PN{len(self.numbers):032d}", "account_sid": self.account_sid,
            "phone_number": phone_number, "friendly_name": phone_number,
            "voice_url": voice_url, "voice_method": voice_method,
            "voice_application_sid": voice_application_sid}

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Listen on 127.0.0.1, an ephemeral port, until cancelled."""
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.url)
        await trio.serve_listeners(self._handle, listeners)

    def _answer(self, method: str, target: str, headers: dict[str, str]
                ) -> tuple[int, dict[str, Any]]:
        user, password = _basic_auth(headers.get("authorization", ""))
        self.requests.append((method, target, user))
        if (user, password) != (self.account_sid, self.auth_token):
            return 401, UNAUTHORIZED
        parts = urlsplit(target)
        account = _ACCOUNT.match(parts.path)
        numbers = _NUMBERS.match(parts.path)
        found = account or numbers
        if method != "GET" or found is None or found["sid"] != self.account_sid:
            return 404, {"code": 20404, "message": f"The requested resource {parts.path} "
                         "was not found", "status": 404}
        if account is not None:
            return 200, {"sid": self.account_sid, "friendly_name": "Fake account",
                         "status": self.status, "type": "Full"}
        wanted = parse_qs(parts.query).get("PhoneNumber")
        listed = [n for n in self.numbers.values()
                  if wanted is None or n["phone_number"] in wanted]
        return 200, {"incoming_phone_numbers": listed, "page": 0, "page_size": 50,
                     "start": 0, "end": len(listed) - 1, "uri": target,
                     "first_page_uri": target, "next_page_uri": None,
                     "previous_page_uri": None}

    async def _handle(self, stream: trio.SocketStream) -> None:
        buffer = bytearray()
        try:
            while (request := await receive_request(stream, buffer)) is not None:
                method, target, headers, _ = request
                status, body = self._answer(method, target, headers)
                await stream.send_all(_response(status, body))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()


def _basic_auth(header: str) -> tuple[str | None, str | None]:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None, None
    try:
        user, _, password = base64.b64decode(encoded).decode().partition(":")
    except ValueError:
        return None, None
    return user, password


def _response(status: int, body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    head = (f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
            "Connection: keep-alive\r\n\r\n")
    return head.encode() + data


@asynccontextmanager
async def running_fake_twilio_api(account_sid: str, auth_token: str
                                  ) -> AsyncIterator[FakeTwilioApi]:
    """The fake, served for the duration of the block, then stopped."""
    fake = FakeTwilioApi(account_sid, auth_token)
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        yield fake
        nursery.cancel_scope.cancel()
