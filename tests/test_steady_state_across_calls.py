"""A server process runs for weeks: whatever it keeps per call must be gone once the call is.

Through the real server on SQLite with the scripted model and real Twilio-side sockets, one
round of every kind of call (a hang-up, a barge-in, a tool, a reconnect through ``/action``,
a refused second socket, a reconnect asked for while the socket is still up, a socket that
never sends setup, a webhook with a bad signature), then the same again with new CallSids:
after the second round every per-call structure is back where the first left it, counted,
not measured in bytes (over 900 such calls the traced heap grew ~150 B a call between
checkpoints: trio's stale deadline entries, which it prunes, and the measuring itself).

``SessionOffers`` and ``RelayAnswers._answered`` are kept for PENDING_TTL_S by design (a
socket may still come; a replay may still race): here they hold only what this test made
in the last two minutes, and the unit test below shows the answers pruned after it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, cast

import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed, open_websocket_url

from tests.server_harness import AUTH_TOKEN, RunningServer, make_settings, running_server
from tests.test_sessions_elsewhere import _two_processes
from voiceagent.app.caller import (
    CallerError,
    Identity,
    open_call,
    open_relay,
    post_form,
    reconnect_target,
    release_transport,
)
from voiceagent.app.relay_answers import ActionReplayed, RelayAnswers
from voiceagent.app.runtime import Runtime
from voiceagent.app.session_offers import PENDING_TTL_S
from voiceagent.settings import Settings
from voiceagent.signature import sign
from voiceagent.store.base import Store

pytestmark = pytest.mark.timeout(90)

KINDS = ("hangup", "barge_in", "tool", "reconnect", "second_socket", "busy_reconnect",
         "no_setup", "bad_signature")
RECONNECTS = {"reconnect", "busy_reconnect"}        # each leaves one answered SessionId


async def _completed(url: str, sid: str) -> None:
    await post_form(url + "/action", {"CallSid": sid, "SessionStatus": "ended",
                                      "CallStatus": "completed", "SessionId": "VX" + "0" * 32},
                    AUTH_TOKEN)


async def _call(url: str, kind: str, sid: str) -> None:
    identity = Identity(call_sid=sid)
    if kind == "bad_signature":
        with pytest.raises(CallerError, match="403"):
            await post_form(url + "/twiml", {"CallSid": sid, "From": "+15555550100"},
                            "not-the-auth-token")
        return
    if kind == "no_setup":
        ws_url = url.replace("http", "ws", 1) + "/relay"
        async with open_websocket_url(ws_url, extra_headers=[
                (b"X-Twilio-Signature", sign(AUTH_TOKEN, ws_url).encode())]) as ws:
            with pytest.raises(ConnectionClosed):
                await ws.get_message()          # closed by the server at SETUP_TIMEOUT_S
            await release_transport(ws)
        return
    async with open_call(url, auth_token=AUTH_TOKEN, identity=identity) as call:
        if kind == "barge_in":
            await call.say("tell me a story")
            for _ in range(3):
                assert await call.receive() is not None
            await call.interrupt()
        else:
            await call.say("when can I pick up my order?" if kind == "tool"
                           else "what are your hours?")
            await call.read_reply()
        if kind == "second_socket":             # refused: the call has its socket
            async with open_relay(call.target, identity, auth_token=AUTH_TOKEN) as other:
                assert await other.receive() is None
        if kind == "busy_reconnect":            # refused after the grace: still connected
            with pytest.raises(CallerError, match="cannot take your call"):
                await reconnect_target(url, sid, call.session_id, auth_token=AUTH_TOKEN)
        if kind != "reconnect":
            await call.hang_up()
            await _completed(url, sid)
            return
        failed = call.session_id
        await call.fail()
    target = await reconnect_target(url, sid, failed, auth_token=AUTH_TOKEN)
    async with open_relay(target, identity, auth_token=AUTH_TOKEN) as call:
        await call.say("what are your hours?")
        await call.read_reply()
        await call.hang_up()
    await _completed(url, sid)


async def _round(server: RunningServer, first: int) -> None:
    async with trio.open_nursery() as nursery:
        for i, kind in enumerate(KINDS):
            nursery.start_soon(_call, server.url, kind, f"CA{first + i:032x}")


def _tasks() -> int:
    def walk(task: trio.lowlevel.Task) -> int:
        return 1 + sum(walk(t) for n in task.child_nurseries for t in n.child_tasks)
    return walk(trio.lowlevel.current_root_task())


async def _held(runtime: Runtime) -> dict[str, int]:
    """What the process holds once every call of a round is over and its writes are in."""
    await runtime.calls.wait_idle()
    assert await runtime.writer.flush(timeout_s=10)
    sessions = runtime.sessions
    if sessions._wind_downs:                # each looked at QUEUE_BEHIND_S after its close
        await trio.sleep_until(sessions._wind_downs[-1][0])
    await trio.testing.wait_all_tasks_blocked(0.02)
    assert runtime.metrics is not None
    return {
        "sessions live": len(sessions._live), "renewals waiting": len(sessions._gone),
        "winding down": len(sessions._closing), "wind-down marks": len(sessions._wind_downs),
        "lookups": len(sessions._spent._looking), "spent tokens": len(sessions._spent._spent),
        "offers": len(sessions._offers), "calls live": len(runtime.calls.live),
        "claims": runtime.calls.claims,       # (calls.reports: the last 100, for tests)
        "calls looked up": runtime.calls.lookups,
        "sockets waiting": len(runtime.sockets_waiting), "queued": runtime.writer.pending,
        "queued calls": len(runtime.writer._last_by_call),
        "calls part written": len(runtime.writer._done_by_call),
        "use cases cached": len(runtime.catalog._cache),
        "edge refusal kinds": len(runtime.edge_refusals._total),
        "metric samples": sum(1 for line in runtime.metrics.exposition().splitlines()
                              if line and not line.startswith(b"#")),
        "tasks": _tasks(), "open files": len(os.listdir("/proc/self/fd")),
    }


async def test_a_second_round_of_calls_leaves_nothing_more_behind(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, SETUP_TIMEOUT_S="0.5")
    with trio.fail_after(60):
        async with running_server(settings) as server:
            runtime = server.runtime
            await _round(server, 0)
            first = await _held(runtime)
            answered = len(runtime.relay_answers._answered_order)
            await _round(server, len(KINDS))
            second = await _held(runtime)
            # sockets that became calls: all but no_setup, bad_signature and the second
            # socket, and the reconnect's two
            assert runtime.calls.total == 2 * 7
    assert first["offers"] == first["sessions live"] == first["spent tokens"] == 0
    assert second == first
    # kept PENDING_TTL_S by design, one per failed relay session answered, nothing else
    assert answered == len(RECONNECTS)
    assert len(runtime.relay_answers._answered_order) == 2 * len(RECONNECTS)


async def test_answered_relay_sessions_are_forgotten_after_their_time(
        autojump_clock: Any) -> None:
    """A replayed ``/action`` is refused in memory for PENDING_TTL_S (the store's mark
    refuses it after that); past it the entry goes, or every reconnect of a process's life
    would stay in memory and be scanned by every later one."""
    store, _, writer, _ = await _two_processes()
    answers = RelayAnswers(settings=Settings(), store=cast(Store, store), writer=writer)
    with trio.fail_after(PENDING_TTL_S * 3):
        for i in range(5):
            await answers.answer_failure(f"CA{i:032x}", "VX" + "a" * 32, 0)
        assert len(answers._answered_order) == len(answers._answered) == 5
        with pytest.raises(ActionReplayed):
            await answers.answer_failure(f"CA{0:032x}", "VX" + "a" * 32, 0)
        await trio.sleep(PENDING_TTL_S + 1)
        await answers.answer_failure("CA" + "f" * 32, "VX" + "a" * 32, 0)
    assert [(call, sid) for _, call, sid in answers._answered_order] == [
        ("CA" + "f" * 32, "VX" + "a" * 32)]
    assert answers._answered == {"CA" + "f" * 32: {"VX" + "a" * 32}}     # no empty sets left
