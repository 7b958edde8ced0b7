"""How many lines calls turned away at ``/twiml`` write to the log (CloudWatch bills each one),
through the real server: while the store is down every call that rings is refused, and each
wrote 'store unavailable while preparing a call: refused' with the same 300-character error
(~2 a second at 300 calls in progress, ~130 a second when callers kept retrying, measured).
Each refusal is still counted (voiceagent_calls_refused_total, EMF CallsRefused); the log
says why once, then how many each minute, then that calls are taken again."""

from __future__ import annotations

import logging
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from tests.server_harness import AUTH_TOKEN, RunningServer, make_settings, running_server
from voiceagent.app.caller import CallerError, post_form
from voiceagent.errors import StoreError
from voiceagent.log_episodes import QUIET_S

LINES = ("store unavailable while preparing a call: refused", "calls still refused",
         "calls taken again")


async def ring(server: RunningServer, n: int) -> str:
    form = {"CallSid": f"CA{n:032d}", "From": "+15555550100", "To": "+15555550199"}
    with suppress(CallerError):                 # 503 with OVER_CAPACITY=503
        return await post_form(server.url + "/twiml", form, AUTH_TOKEN)
    return ""


@pytest.mark.timeout(60)              # virtual time below; this bounds the real requests
async def test_calls_refused_while_the_store_is_down_are_counted(
        tmp_path: Path, mock_clock: trio.testing.MockClock,
        records: list[logging.LogRecord]) -> None:
    with trio.fail_after(600):
        async with running_server(make_settings(tmp_path)) as server:
            store = server.runtime.store
            real_get = store.get

            async def down(pk: str, sk: str) -> Any:
                raise StoreError("DynamoDB GetItem on voiceagent failed "
                                 "(ProvisionedThroughputExceededException): slow down")

            store.get = down                                # type: ignore[method-assign]
            for n in range(36):                             # a call rings every 5 s
                assert "<Connect" not in await ring(server, n)
                mock_clock.jump(5.0)
            store.get = real_get                            # type: ignore[method-assign]
            mock_clock.jump(QUIET_S)
            assert "<Connect" in await ring(server, 99)
    logged = [r for r in records if r.getMessage() in LINES]
    assert [r.getMessage() for r in logged] == [
        "store unavailable while preparing a call: refused", "calls still refused",
        "calls still refused", "calls taken again"]
    first, summary, _, end = logged
    assert vars(first)["call_sid"] == "CA" + "0" * 32
    assert "ProvisionedThroughputExceededException" in vars(first)["error"]
    assert vars(summary)["counts"] == {"store": 13}
    assert vars(end)["counts"] == {"store": 36}
    assert vars(end)["call_sid"] == "-"
