"""``voiceagent check`` on Twilio: the account's token, and whether the number's voice webhook
is this service, against a local fake of Twilio's REST API."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from tests.check_support import (
    ACCOUNT,
    NUMBER,
    PUBLIC_URL,
    RUN_TIMEOUT_S,
    offline_twilio,
    run_check,
)

pytestmark = pytest.mark.timeout(90)


# ---------------------------------------------------------------------------- Twilio

async def test_a_wrong_twilio_token_fails_and_the_number_is_skipped(tmp_path: Path) -> None:
    with trio.fail_after(RUN_TIMEOUT_S):
        async with offline_twilio(tmp_path) as (twilio, env):
            twilio.add_number(NUMBER, voice_url=f"{PUBLIC_URL}/twiml")
            run = await run_check({**env, "TWILIO_AUTH_TOKEN": "not-the-token"}, tmp_path,
                                  "--number", NUMBER)
    lines = run.lines
    assert run.code == 1
    credentials = lines["Twilio credentials"]
    assert credentials.status == "fail"
    assert credentials.detail == (f"Twilio refused TWILIO_ACCOUNT_SID={ACCOUNT} with this "
                                  "TWILIO_AUTH_TOKEN (HTTP 401, error 20003)")
    assert credentials.advice[0].startswith("set TWILIO_AUTH_TOKEN to the account's Auth Token")
    assert lines[f"Twilio number {NUMBER}"].status == "skip"
    assert len(twilio.requests) == 1
    assert "not-the-token" not in run.out + run.err


@pytest.mark.parametrize("case", ["elsewhere", "not in the account"])
async def test_a_number_whose_webhook_is_not_ours_says_what_to_set(tmp_path: Path,
                                                                  case: str) -> None:
    with trio.fail_after(RUN_TIMEOUT_S):
        async with offline_twilio(tmp_path) as (twilio, env):
            if case == "elsewhere":
                twilio.add_number(NUMBER, voice_url="https://old.example.com/voice",
                                  voice_method="GET")
            twilio.add_number("+15550000000", voice_url=f"{PUBLIC_URL}/twiml")
            run = await run_check(env, tmp_path, "--number", NUMBER)
    lines = run.lines
    number = lines[f"Twilio number {NUMBER}"]
    assert run.code == 1
    assert lines["Twilio credentials"].status == "pass"
    assert number.status == "fail"
    if case == "elsewhere":
        assert number.detail == (f"voice webhook URL is https://old.example.com/voice, "
                                 f"expected {PUBLIC_URL}/twiml; method is GET, expected POST")
        assert number.advice == [
            f"Twilio console > Phone Numbers > Manage > Active numbers > {NUMBER} > Voice "
            f"configuration: \"A call comes in\" = Webhook, URL {PUBLIC_URL}/twiml, HTTP POST; "
            "then Save configuration"]
    else:
        assert number.detail == f"not a number of account {ACCOUNT}"
