"""Twilio's requests refused for their signature: after an auth-token rotation, or with
PUBLIC_URL not the address the number's webhook names, every call fails with a 403 before
any other figure moves (no 5XX, no CallsRefused, no turn), so nothing paged anyone and the
one log line said "bad signature" and the path. Now the line says which URL the signature
was checked against, which CallSid the request claimed and what to compare, and each
refusal is counted: ``voiceagent_bad_signatures_total`` and ``BadSignatures`` on the 10 s
EMF line (zeros included), which the template's bad-signatures alarm reads."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import trio

from tests.server_harness import AUTH_TOKEN, make_settings, running_server
from tests.test_e2e import upgrade_status
from tests.test_metrics import METRICS_TOKEN, _capture_emf, _scrape, _value
from voiceagent.app.caller import CallerError, Identity, open_call, post_form

ROTATED = "the-account-token-after-a-rotation"


@pytest.mark.timeout(60)
async def test_twilio_signing_with_another_token_is_said_and_counted(
        tmp_path: Path, records: list[logging.LogRecord]) -> None:
    settings = make_settings(tmp_path, METRICS_TOKEN=METRICS_TOKEN,
                             METRICS_NAMESPACE="TestNamespace",
                             METRICS_SERVICE_NAME="test-service")
    rung = [Identity() for _ in range(3)]
    with trio.fail_after(30):
        async with running_server(settings) as server:
            metrics = server.runtime.metrics
            assert metrics is not None
            stream = _capture_emf(server.runtime)
            metrics.emit_active_calls()                       # a quiet interval: 0
            for identity in rung:
                with pytest.raises(CallerError, match="403"):
                    await post_form(server.url + "/twiml", {
                        "CallSid": identity.call_sid, "From": identity.from_number,
                        "To": identity.to_number}, ROTATED)
            assert await upgrade_status(server.url, "/relay",
                                        {"X-Twilio-Signature": "bm90"}) == 403
            metrics.emit_active_calls()                       # the four of them
            async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                await call.hang_up()                          # a signed call counts nothing
            await server.runtime.calls.wait_idle()
            metrics.emit_active_calls()
            _, samples = await trio.to_thread.run_sync(_scrape, server.url)
    assert _value(samples, "voiceagent_bad_signatures_total") == 4
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [d["BadSignatures"] for d in lines if "ActiveCalls" in d] == [0, 4, 0]
    directive, = lines[1]["_aws"]["CloudWatchMetrics"]
    assert {"Name": "BadSignatures", "Unit": "Count"} in directive["Metrics"]

    webhook, = (r for r in records if r.getMessage() == "bad signature")
    fields = vars(webhook)
    assert fields["path"] == "/twiml"
    assert fields["claimed_call_sid"] == rung[0].call_sid   # a grep for Twilio's CallSid
    assert fields["checked_url"] == server.url + "/twiml"
    assert "TWILIO_AUTH_TOKEN" in fields["what_to_check"]
    assert "PUBLIC_URL" in fields["what_to_check"]
    upgrade, = (r for r in records if r.getMessage() == "bad signature on relay upgrade")
    assert vars(upgrade)["checked_url"] == server.url.replace("http", "ws") + "/relay"
    assert "TWILIO_AUTH_TOKEN" in vars(upgrade)["what_to_check"]
    assert ROTATED not in json.dumps([vars(r) for r in records], default=str)
