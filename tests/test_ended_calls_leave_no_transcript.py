"""An ended call's transcript is not kept by the server that served it.

Each call's ``CallReport`` carries its whole ``History``: every turn's text and tool results.
The server kept the last 100 ended reports "for tests/metrics", yet the metrics take each
report as its call ends and no production code read them again: up to 100 callers' words
held in memory, after their calls, for no reader. A server keeps none now; the test helpers
(``voiceagent.app.testing``, ``tests.server_harness``) ask for them.
"""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import pytest
import trio

from actors.history import History
from tests.server_harness import AUTH_TOKEN, make_settings
from voiceagent.app.caller import Identity, open_call
from voiceagent.app.server import open_server

pytestmark = pytest.mark.timeout(60)

CALLS = 3


async def test_a_server_keeps_no_history_of_its_ended_calls(tmp_path: Path) -> None:
    histories: list[weakref.ref[History]] = []
    with trio.fail_after(30):
        async with open_server(make_settings(tmp_path)) as (url, runtime):
            for i in range(CALLS):
                identity = Identity(call_sid=f"CA{i:032x}")
                async with open_call(url, auth_token=AUTH_TOKEN, identity=identity) as call:
                    await call.say("when can I pick up my order?")    # a tool round too
                    await call.read_reply()
                    live = [r for r in runtime.calls.live if r.call_sid == identity.call_sid]
                    assert live
                    assert live[0].history is not None
                    assert len(live[0].history.messages) >= 2
                    histories.append(weakref.ref(live[0].history))
                    del live
                    await call.hang_up()
                await runtime.calls.wait_idle()
            assert await runtime.writer.flush(timeout_s=10)
            assert runtime.calls.total == CALLS
            assert runtime.calls.reports == []
            gc.collect()
            held = [ref for ref in histories if ref() is not None]
            assert held == [], (f"{len(held)} of {CALLS} ended calls' histories still held: "
                                f"{[type(r).__name__ for r in gc.get_referrers(held[0]())]}")

