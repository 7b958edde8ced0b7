"""How many lines requests refused at the edge write to the log (CloudWatch bills each one),
through the real server: anyone can send a webhook with a bad signature, or a relay upgrade
with one, as fast as the server answers. Each was a line (~560 lines a second measured from
one client); now the first of each kind is logged, then a summary with counts each minute
while they keep coming, and a line once a signed request comes after a quiet spell."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import pytest
import trio
import trio.testing

from tests.server_harness import AUTH_TOKEN, RunningServer, make_settings, running_server
from tests.test_e2e import upgrade_status
from voiceagent.app.caller import CallerError, open_call, post_form
from voiceagent.log_episodes import QUIET_S

LINES = ("bad signature", "bad signature on relay upgrade", "requests still refused at the edge",
         "requests no longer refused at the edge")


async def refused(server: RunningServer, *, posts: int, upgrades: int) -> None:
    for n in range(posts):
        with pytest.raises(CallerError, match="403"):
            await post_form(server.url + ("/twiml", "/action")[n % 2],
                            {"CallSid": "CA" + "9" * 32}, "not-the-token")
    for _ in range(upgrades):
        assert await upgrade_status(server.url, "/relay", {"X-Twilio-Signature": "bm90"}) == 403


@pytest.mark.timeout(60)              # virtual time below; this bounds the real requests
async def test_a_flood_of_bad_signatures_is_counted_not_logged_one_by_one(
        tmp_path: Path, mock_clock: trio.testing.MockClock,
        records: list[logging.LogRecord]) -> None:
    with trio.fail_after(600):
        async with running_server(make_settings(tmp_path)) as server:
            for _ in range(36):                         # three minutes of it
                await refused(server, posts=2, upgrades=1)
                mock_clock.jump(5.0)
            await refused(server, posts=2, upgrades=0)
            mock_clock.jump(QUIET_S)
            async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                await call.hang_up()
            await server.runtime.calls.wait_idle()
    logged = [r for r in records if r.getMessage() in LINES]
    assert [r.getMessage() for r in logged] == [
        "bad signature", "bad signature on relay upgrade",
        *["requests still refused at the edge"] * 3, "requests no longer refused at the edge"]
    first, _, summary, *_, end = logged
    assert vars(first)["path"] == "/twiml"
    assert vars(summary)["counts"] == {"bad_signature": 25, "upgrade_bad_signature": 12}
    assert vars(end)["counts"] == {"bad_signature": 74, "upgrade_bad_signature": 36}
    assert vars(end)["lasted_s"] == 180.0
    assert Counter(r.getMessage() for r in records if r.levelno >= logging.WARNING) == Counter(
        {"bad signature": 1, "bad signature on relay upgrade": 1,
         "requests still refused at the edge": 3})


@pytest.mark.timeout(60)
async def test_a_server_stopping_mid_flood_logs_what_it_counted(
        tmp_path: Path, mock_clock: trio.testing.MockClock,
        records: list[logging.LogRecord]) -> None:
    with trio.fail_after(600):
        async with running_server(make_settings(tmp_path)) as server:
            await refused(server, posts=1, upgrades=0)
            mock_clock.jump(5.0)
            await refused(server, posts=3, upgrades=2)
    logged = [r for r in records if r.getMessage() in LINES]
    assert [r.getMessage() for r in logged] == [
        "bad signature", "bad signature on relay upgrade", "requests still refused at the edge"]
    assert vars(logged[-1])["counts"] == {"bad_signature": 4, "upgrade_bad_signature": 2}
    assert vars(logged[-1])["stopping"] is True
    assert vars(logged[-1])["for_s"] == 5.0
