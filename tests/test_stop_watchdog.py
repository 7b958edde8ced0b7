"""The stop's watchdog, on trio's virtual clock: a peer that stopped reading holds hypercorn's
shielded send past every deadline of the stop, and the watchdog exits the process 12 s after
the drain (hypercorn's last grace, then WATCHDOG_S), or at the stop's budget if that comes
first, logging the store writes it drops. Its exit is ``os._exit``, so the subprocess test
(test_drain's) sees only that it happened: here ``serve``'s ``exit_process`` notes when, and
with what logged. The real server, a real client on 127.0.0.1 that stops reading a reply of
megabytes, SQLite; "the store stalls" is its writes never answering."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import trio
import trio.testing

from tests.send_waits import until_it_waits_to_send
from tests.server_harness import AUTH_TOKEN, make_settings
from tests.settled_clock import jump_when_settled
from tests.test_drain import bulk_config
from voiceagent.app.caller import Identity, open_call
from voiceagent.app.runtime import Runtime, open_runtime
from voiceagent.app.server import WATCHDOG_S, serve
from voiceagent.app.stop_budget import GRACEFUL_S, budget_s
from voiceagent.settings import Settings

pytestmark = pytest.mark.timeout(60)

STUCK = "shutdown stuck on a connection that stopped reading; exiting"
DROPPED = "store writes dropped at shutdown"
WATCHDOG_WHY = "the process exits under a stuck connection"
OTHER_SID = "CA" + "7" * 32


@dataclass
class Watched:
    """What the test saw of one stop held by a peer that stopped reading."""

    call_sid: str
    stop_started: float = 0.0
    stop_deadline: float = 0.0
    drained_at: float | None = None
    exits: list[tuple[float, int]] = field(default_factory=list)
    unwritten_at_exit: dict[str, int] = field(default_factory=dict)
    logged_at_exit: list[logging.LogRecord] = field(default_factory=list)


class _NoteDrained(logging.Handler):
    """When, on the virtual clock, the drain logged its end: the watchdog counts from it."""

    def __init__(self, watched: Watched) -> None:
        super().__init__(level=logging.INFO)
        self.watched = watched

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == "drained":
            self.watched.drained_at = trio.current_time()


async def _stop_reading(url: str, identity: Identity, *,
                        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    async with open_call(url, auth_token=AUTH_TOKEN, identity=identity) as call:
        await call.say("read me everything")
        assert await call.receive() is not None
        task_status.started()
        await trio.sleep_forever()          # and reads nothing more


async def _stop_held_by_a_peer(settings: Settings, records: list[logging.LogRecord], *,
                               before_the_stop: Callable[[Runtime], None] = lambda _: None
                               ) -> Watched:
    """Serve, have a peer stop reading a long reply, stop the server, and note the watchdog's
    exit; then let the peer go (its socket closed, the held send fails) so the stop ends."""
    watched = Watched(call_sid=Identity().call_sid)
    exited = trio.Event()
    server_log = logging.getLogger("voiceagent.app.server")
    noting = _NoteDrained(watched)
    server_log.addHandler(noting)
    try:
        async with open_runtime(settings) as runtime:

            def exit_process(code: int) -> None:
                watched.exits.append((trio.current_time(), code))
                watched.unwritten_at_exit = runtime.writer.unwritten()
                watched.logged_at_exit = list(records)
                exited.set()

            async with trio.open_nursery() as server:
                stop = trio.Event()
                binds = await server.start(partial(
                    serve, runtime, host=settings.host, port=settings.port, shutdown=stop,
                    exit_code=lambda: 0, exit_process=exit_process))
                async with trio.open_nursery() as peer:
                    await peer.start(_stop_reading, binds[0], Identity(call_sid=watched.call_sid))
                    # the stop must find the send held, not a reply still filling buffers
                    # (cut by the drain, the call would end and nothing would hold it)
                    await until_it_waits_to_send(os.getpid(), urlsplit(binds[0]).port or 0)
                    before_the_stop(runtime)
                    stop.set()
                    await exited.wait()
                    assert runtime.stop is not None
                    watched.stop_started = runtime.stop.started_at
                    watched.stop_deadline = runtime.stop.deadline
                    peer.cancel_scope.cancel()
    finally:
        server_log.removeHandler(noting)
    return watched


def _stall_the_store(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every write from now on waits for an answer that never comes (a DynamoDB that takes
    the request and says nothing), and one more call has a write waiting."""
    async def stalled(*_: Any, **__: Any) -> None:
        await trio.sleep_forever()

    for name in ("put", "put_many", "put_new", "put_if_newer", "put_unless_newer"):
        monkeypatch.setattr(runtime.store, name, stalled)
    runtime.writer.submit({"pk": OTHER_SID, "sk": "chat::0001",
                           "text": "my card number is secret"}, call_sid=OTHER_SID)


async def test_the_watchdog_exits_12_s_after_the_drain_when_the_budget_allows(
        tmp_path: Path, mock_clock: trio.testing.MockClock,
        monkeypatch: pytest.MonkeyPatch, records: list[logging.LogRecord]) -> None:
    jump_when_settled(mock_clock, monkeypatch)
    settings = make_settings(tmp_path, CONFIG_DIR=bulk_config(tmp_path / "config"),
                             STACK_USE_CASE="bulkUseCase", DRAIN_TIMEOUT_S="0.5",
                             END_GRACE_S="0.5", FLUSH_TIMEOUT_S="10")
    assert budget_s(settings) == 18
    with trio.fail_after(120):
        watched = await _stop_held_by_a_peer(settings, records)
    assert watched.drained_at is not None
    # the drain ended the call at its deadline, found it stuck and flushed at once
    assert watched.drained_at == pytest.approx(watched.stop_started + 1.0)
    assert GRACEFUL_S + WATCHDOG_S == 12
    assert [at for at, _ in watched.exits] == [pytest.approx(watched.drained_at + 12)]
    assert watched.exits[0][0] < watched.stop_deadline - 4      # not the budget: well before
    assert [r.getMessage() for r in watched.logged_at_exit].count(STUCK) == 1
    assert [code for _, code in watched.exits] == [0]


async def test_the_watchdog_exits_at_the_stops_budget_when_less_is_left(
        tmp_path: Path, mock_clock: trio.testing.MockClock,
        monkeypatch: pytest.MonkeyPatch, records: list[logging.LogRecord]) -> None:
    """With the store stalled the drain's flush waits its FLUSH_TIMEOUT_S, 11 s in; 12 s more
    would be 23 s, 5 s past the 18 s these settings allow (on Fargate: SIGKILL, and the lines
    saying what was lost, lost)."""
    jump_when_settled(mock_clock, monkeypatch)
    settings = make_settings(tmp_path, CONFIG_DIR=bulk_config(tmp_path / "config"),
                             STACK_USE_CASE="bulkUseCase", DRAIN_TIMEOUT_S="0.5",
                             END_GRACE_S="0.5", FLUSH_TIMEOUT_S="10")
    with trio.fail_after(120):
        watched = await _stop_held_by_a_peer(
            settings, records, before_the_stop=partial(_stall_the_store, monkeypatch=monkeypatch))
    assert watched.drained_at == pytest.approx(watched.stop_started + 11)
    assert watched.stop_deadline == pytest.approx(watched.stop_started + budget_s(settings))
    assert [at for at, _ in watched.exits] == [pytest.approx(watched.stop_deadline)]


async def test_the_watchdog_logs_the_writes_it_drops_by_call_without_their_content(
        tmp_path: Path, mock_clock: trio.testing.MockClock,
        monkeypatch: pytest.MonkeyPatch, records: list[logging.LogRecord]) -> None:
    """Before it exits: a line under each call's CallSid with its count, one for the process
    with the totals, and nothing of what the writes held (the stuck call's transcript, the
    other call's item)."""
    jump_when_settled(mock_clock, monkeypatch)
    settings = make_settings(tmp_path, CONFIG_DIR=bulk_config(tmp_path / "config"),
                             STACK_USE_CASE="bulkUseCase", DRAIN_TIMEOUT_S="0.5",
                             END_GRACE_S="0.5", FLUSH_TIMEOUT_S="10")
    with trio.fail_after(120):
        watched = await _stop_held_by_a_peer(
            settings, records, before_the_stop=partial(_stall_the_store, monkeypatch=monkeypatch))
    unwritten = watched.unwritten_at_exit
    assert set(unwritten) == {watched.call_sid, OTHER_SID}      # its transcript, the other's
    assert unwritten[OTHER_SID] == 1
    assert unwritten[watched.call_sid] >= 1
    dropped = [vars(r) for r in watched.logged_at_exit
               if r.getMessage() == DROPPED and vars(r).get("why") == WATCHDOG_WHY]
    by_call = {line["call_sid"]: line["items"] for line in dropped if line["call_sid"] != "-"}
    (summary,) = [line for line in dropped if line["call_sid"] == "-"]
    assert by_call == unwritten
    assert (summary["items"], summary["calls"], sorted(summary["call_sids"])) == (
        sum(unwritten.values()), 2, sorted(unwritten))
    for line in dropped:
        for content in ("secret", "read me everything", "chat::", " w1 "):
            assert content not in str(line), (content, line)
