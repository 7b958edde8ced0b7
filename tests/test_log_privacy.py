"""What the operator's log holds after a whole call through the real server, the real Bedrock
backend and a real WebSocket: a sentinel secret in every place a secret or the caller's content
travels (the auth token, the signature header, the session token, the metrics bearer, the form
body, the caller's words, the model's words, tool arguments and results, a Bedrock error that
echoes its input) reaches no log line, and every line written while the call is live carries
its CallSid."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.fake_bedrock import (
    HttpError,
    RecordedRequest,
    Reply,
    message_end,
    message_start,
    running_fake_bedrock,
    stream_reply,
    text_reply,
    tool_events,
)
from tests.server_harness import AUTH_TOKEN, make_settings, running_server
from voiceagent.app.caller import Identity, open_relay, parse_relay_twiml, post_form
from voiceagent.logs import JsonFormatter
from voiceagent.tools.base import ToolDefinition
from voiceagent.tools.registry import ToolRegistry

SECRETS = {
    "speech": "SENTINEL-SPEECH-1111",
    "reply": "SENTINEL-REPLY-2222",
    "argument": "SENTINEL-ARGUMENT-3333",
    "result": "SENTINEL-RESULT-4444",
    "echo": "SENTINEL-ECHO-5555",
    "caller_name": "SENTINEL-NAME-6666",
    "bearer": "SENTINEL-BEARER-7777",
    "signature": "SENTINEL-SIGNATURE-8888",
    "metrics_token": "SENTINEL-METRICS-9999",
}
CALLER = "+15555550987"


def _said(request: RecordedRequest) -> str:
    content = request.body["messages"][-1]["content"]
    return json.dumps(content)


def _respond(request: RecordedRequest) -> Reply:
    said = _said(request)
    if SECRETS["result"] in said:                 # the tool's result came back: Bedrock
        return HttpError(400, "ValidationException",  # refuses and quotes what it was sent
                         f"1 validation error detected: Value '{SECRETS['echo']} "
                         f"{SECRETS['result']}' at 'messages.3.member.content' failed")
    if "pick up" in said:
        arguments = json.dumps({"note": SECRETS["argument"]})
        return stream_reply(message_start(),
                            tool_events(0, "tooluse-1", "CheckRestaurantPickUpTime",
                                        [arguments]),
                            message_end("tool_use"))
    return text_reply(["Sure, ", SECRETS["reply"]])


def _get(url: str, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return err.code


def _post(url: str, form: dict[str, str], headers: dict[str, str]) -> int:
    import urllib.parse
    request = urllib.request.Request(url, data=urllib.parse.urlencode(form).encode(),
                                     method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return err.code


async def test_no_secret_or_caller_content_reaches_the_log(
        tmp_path: Path, aws_env: None, monkeypatch: pytest.MonkeyPatch,
        records: list[logging.LogRecord]) -> None:
    async def pickup_time(ctx: Any, args: Any) -> dict[str, Any]:
        return {"minutes": 20, "note": SECRETS["result"]}

    registry = ToolRegistry([ToolDefinition("CheckRestaurantPickUpTime", pickup_time)])
    identity = Identity(from_number=CALLER)
    form = {"CallSid": identity.call_sid, "AccountSid": identity.account_sid,
            "From": CALLER, "To": identity.to_number, "CallStatus": "ringing",
            "Direction": "inbound", "CallerName": SECRETS["caller_name"]}
    async with running_fake_bedrock(responder=_respond) as bedrock:
        monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", bedrock.endpoint_url)
        settings = make_settings(tmp_path, LLM="bedrock", AWS_REGION="us-east-1",
                                 METRICS_TOKEN=SECRETS["metrics_token"], LOG_FORMAT="json")
        with trio.fail_after(30):
            async with running_server(settings, registry=registry) as server:
                url = server.url
                assert await trio.to_thread.run_sync(
                    _post, url + "/twiml", {"CallSid": "CA" + "1" * 32},
                    {"X-Twilio-Signature": SECRETS["signature"]}) == 403
                assert await trio.to_thread.run_sync(
                    _get, url + "/metrics",
                    {"Authorization": f"Bearer {SECRETS['bearer']}"}) == 401
                target = parse_relay_twiml(await post_form(url + "/twiml", form, AUTH_TOKEN))
                session_token = next(iter(target.parameters.values()))
                live_from = len(records)
                async with open_relay(target, identity, auth_token=AUTH_TOKEN) as call:
                    await call.say(f"what are your hours? {SECRETS['speech']}")
                    assert SECRETS["reply"] in (await call.read_reply()).text
                    await call.say("when can I pick up my order?")
                    assert SECRETS["reply"] not in (await call.read_reply()).text
                    await call.hang_up()
                await server.runtime.calls.wait_idle()
                live_to = len(records)
    formatter = JsonFormatter()
    lines = [formatter.format(record) for record in records]
    text = "\n".join(lines)
    assert any('"bedrock call failed"' in line for line in lines)
    assert any('"tool done"' in line for line in lines)
    for where, secret in [*SECRETS.items(), ("auth_token", AUTH_TOKEN),
                          ("session_token", session_token), ("caller", CALLER)]:
        assert secret not in text, where
    unlabelled = [lines[n] for n in range(live_from, live_to)
                  if records[n].__dict__.get("call_sid") != identity.call_sid]
    assert unlabelled == []
