"""A refused webhook is answered before quart: no nursery, no task, for anyone's request; a
signed one reaches the handler with its form handed over."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import trio

from tests.server_harness import AUTH_TOKEN, make_settings, running_server
from tests.test_session_binding import raw_post
from voiceagent.app.runtime import open_runtime
from voiceagent.app.web import create_app
from voiceagent.signature import sign

FORM = {"CallSid": "CA" + "a" * 32, "AccountSid": "AC" + "0" * 32, "From": "+15555550100",
        "To": "+15555550199", "CallStatus": "ringing"}
BODY = "&".join(f"{k}={v}" for k, v in FORM.items()).replace("+", "%2B").encode()


class Spawned(trio.abc.Instrument):
    def __init__(self) -> None:
        self.tasks = 0

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.tasks += 1


async def post(app: Any, signature: str) -> tuple[int, int]:
    """/twiml sent to the ASGI app in this task: its status, and the tasks it spawned."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/twiml", "raw_path": b"/twiml",
             "query_string": b"", "root_path": "", "server": ("127.0.0.1", 80),
             "client": ("127.0.0.1", 5555), "extensions": {},
             "headers": [(b"host", b"127.0.0.1"), (b"content-length", b"%d" % len(BODY)),
                         (b"content-type", b"application/x-www-form-urlencoded"),
                         (b"x-twilio-signature", signature.encode())]}
    given, statuses = False, []

    async def receive() -> dict[str, Any]:
        nonlocal given
        if given:
            await trio.sleep_forever()
        given = True
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    spawned = Spawned()
    trio.lowlevel.add_instrument(spawned)
    try:
        await app(scope, receive, send)
    finally:
        trio.lowlevel.remove_instrument(spawned)
    return statuses[0], spawned.tasks


async def test_a_refused_webhook_never_enters_quart(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with open_runtime(make_settings(tmp_path)) as runtime:
            app = create_app(runtime)
            refused = await post(app, sign("not the token", "http://127.0.0.1/twiml", FORM))
            answered = await post(app, sign(AUTH_TOKEN, "http://127.0.0.1/twiml", FORM))
    assert refused == (403, 0)
    status, tasks = answered
    assert status == 200
    assert tasks > 0                # quart's nursery and tasks: what the refusal is spared


async def test_a_chunked_body_over_the_cap_is_refused_and_counted(
        tmp_path: Path, records: list[logging.LogRecord]) -> None:
    chunk = b"a" * 65536
    chunked = b"".join(b"%x\r\n%b\r\n" % (len(chunk), chunk) for _ in range(2)) + b"0\r\n\r\n"
    with trio.fail_after(10):
        async with running_server(make_settings(tmp_path)) as server:
            status, _ = await raw_post(server, "/twiml", [
                "Transfer-Encoding: chunked", "X-Twilio-Signature: bm90LWEtc2lnbmF0dXJl"],
                chunked)
    assert status == 413                    # and said, as a too long Content-Length is
    assert [vars(r)["path"] for r in records
            if r.getMessage() == "webhook body too large"] == ["/twiml"]
