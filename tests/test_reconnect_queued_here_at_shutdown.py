"""The log of reconnects resumed with their old socket's writes still queued here (a storm:
a task died with hundreds of calls, the store stalled) counts all but the first, and only
a renewal ended the episode: a process stopped mid-storm never said what it had counted,
nor that the storm was still going as it stopped. Its last line now comes at shutdown, as
every other episode's does (``Episode.close``): the summary, with ``stopping``, through the
real server; or its end, if it was over by then and no renewal had noticed."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.server_harness import AUTH_TOKEN, make_settings, running_server, until_started
from tests.test_reconnect_queued_here_log import QUEUED, SIDS, _a_call_whose_socket_failed
from tests.test_session_binding import reconnect_token
from tests.test_sessions_elsewhere import _process, _store_with_use_case
from voiceagent.app.caller import open_call
from voiceagent.errors import StoreError
from voiceagent.log_episodes import QUIET_S
from voiceagent.logs import for_call

STILL = "reconnects still resumed with their calls' writes queued here"
ENDED = "reconnects no longer find their calls' writes queued here"


@pytest.mark.timeout(60)
async def test_a_server_stopping_mid_storm_logs_what_it_counted(
        tmp_path: Path, records: list[logging.LogRecord]) -> None:
    with trio.fail_after(45):
        async with running_server(make_settings(tmp_path, FLUSH_TIMEOUT_S=1)) as server:
            async def stalled(items: Sequence[dict[str, Any]]) -> None:
                await trio.lowlevel.checkpoint()
                raise StoreError("DynamoDB BatchWriteItem: no answer within 4 s")

            server.runtime.store.put_many = stalled     # type: ignore[method-assign]
            calls = []
            for _ in range(2):
                async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                    await until_started(server.runtime.calls, len(calls) + 1)
                    await call.say("hello there")
                    await call.ws.aclose(code=1011, reason="relay session failed")
                calls.append(call)
            await server.runtime.calls.wait_idle()
            for call in calls:                          # each resumed without its writes
                await reconnect_token(server, call.identity.call_sid, call.session_id)
            assert [r.getMessage() for r in records if r.getMessage().startswith(QUEUED)]
            assert not [r for r in records if r.getMessage() in (STILL, ENDED)]
    last = [r for r in records if r.getMessage() in (STILL, ENDED)]
    assert [r.getMessage() for r in last] == [STILL]
    assert vars(last[0])["stopping"] is True
    assert vars(last[0])["counts"] == {"queued": 2}
    assert vars(last[0])["pending"] > 0                 # the backlog it stopped with
    assert vars(last[0])["call_sid"] == "-"             # the process's line, not a call's


async def test_a_storm_over_when_the_process_stops_logs_its_end(
        autojump_clock: Any, records: list[logging.LogRecord]) -> None:
    """Over for QUIET_S, but no renewal came since to say so: the stop says it."""
    store = await _store_with_use_case()
    a, writer = _process(store)
    with trio.fail_after(60):
        for sid in SIDS[:2]:
            session = await _a_call_whose_socket_failed(a, writer, sid)
            with for_call(sid):
                await a.renew(session, deadline=trio.current_time() + 1.0)
        await trio.sleep(QUIET_S)
        a.close()
    last = [r for r in records if r.getMessage() in (STILL, ENDED)]
    assert [r.getMessage() for r in last] == [ENDED]
    assert vars(last[0])["counts"] == {"queued": 2}
