"""ECS task scale-in protection: the holder's rules in virtual time (live calls and unsaved
writes, with a stand-in queue and the real write-behind queue over a store that fails, then
recovers), the HTTP client against a local fake of the ECS agent endpoint, and the real server
holding it through a real call."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import voiceagent.store.records as records
from tests.fake_ecs_agent import open_fake_agent
from tests.fakes import MemoryStore
from tests.server_harness import AUTH_TOKEN, make_settings, running_server
from tests.test_session_binding import token_in
from tests.test_write_behind import FakeStore
from voiceagent.app.caller import Identity, RelayTarget, open_call, open_relay, post_form
from voiceagent.app.runtime import CallCounters, open_runtime
from voiceagent.app.sessions import TOKEN_PARAMETER
from voiceagent.app.task_protection import (
    EXPIRES_MINUTES,
    RENEW_BEFORE_S,
    AgentEndpoint,
    Policy,
    ProtectionError,
    hold_while_busy,
)
from voiceagent.errors import StoreError
from voiceagent.store.write_behind import WriteBehind

LOGGER = "voiceagent.app.task_protection"


class RecordingAgent:
    """Every request with its virtual time; ``down`` makes requests fail as an unreachable
    agent does."""

    def __init__(self, latency_s: float = 0.0) -> None:
        self.requests: list[tuple[float, bool, int | None]] = []
        self.down = False
        self.latency_s = latency_s

    async def set(self, enabled: bool, expires_minutes: int | None) -> None:
        await trio.lowlevel.checkpoint()
        self.requests.append((trio.current_time(), enabled, expires_minutes))
        await trio.sleep(self.latency_s)
        if self.down:
            raise ProtectionError("ECS agent not reachable: connection refused")


class Call:
    """A stand-in for a CallReport: CallCounters only keeps it in a list."""


class Queue:
    """A stand-in for the write-behind queue: the test sets ``pending``; its edges (0 to more
    and back) are announced as ``WriteBehind`` announces them."""

    def __init__(self) -> None:
        self.filled_or_emptied = trio.Event()
        self._pending = 0

    @property
    def pending(self) -> int:
        return self._pending

    @pending.setter
    def pending(self, count: int) -> None:
        edge = (self._pending > 0) != (count > 0)
        self._pending = count
        if edge:
            self.filled_or_emptied.set()
            self.filled_or_emptied = trio.Event()


async def _run(calls: CallCounters, agent: RecordingAgent, policy: Policy,
               script: object, writes: Queue | WriteBehind | None = None) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(hold_while_busy, calls, writes or Queue(), agent, policy)
        await script()                                    # type: ignore[operator]
        nursery.cancel_scope.cancel(reason="test over")


async def test_held_from_the_first_call_renewed_and_released_when_idle(
        autojump_clock: trio.testing.MockClock) -> None:
    calls, agent, call = CallCounters(), RecordingAgent(), Call()

    async def script() -> None:
        await trio.sleep(100)                             # idle: nothing asked
        assert agent.requests == []
        calls.started(call)                               # type: ignore[arg-type]
        await trio.testing.wait_all_tasks_blocked()
        assert agent.requests == [(100.0, True, EXPIRES_MINUTES)]
        await trio.sleep(20 * 60)                         # a 20-minute call
        calls.finished(call)                              # type: ignore[arg-type]
        await trio.sleep(60)

    with trio.fail_after(3600):
        await _run(calls, agent, Policy(idle_release_s=30), script)
    renew_every = EXPIRES_MINUTES * 60 - RENEW_BEFORE_S
    assert [t for t, on, _ in agent.requests if on] == [100 + n * renew_every
                                                      for n in range(4)]
    assert all(minutes == EXPIRES_MINUTES for _, on, minutes in agent.requests if on)
    assert agent.requests[-1] == (100 + 20 * 60 + 30, False, None)


async def test_a_short_gap_between_calls_keeps_the_hold(
        autojump_clock: trio.testing.MockClock) -> None:
    calls, agent = CallCounters(), RecordingAgent()
    first, second = Call(), Call()

    async def script() -> None:
        calls.started(first)                              # type: ignore[arg-type]
        await trio.sleep(60)
        calls.finished(first)                             # type: ignore[arg-type]
        await trio.sleep(10)                              # under the 30 s idle release
        calls.started(second)                             # type: ignore[arg-type]
        await trio.sleep(60)
        calls.finished(second)                            # type: ignore[arg-type]
        await trio.sleep(31)

    with trio.fail_after(3600):
        await _run(calls, agent, Policy(idle_release_s=30), script)
    assert [(t, on) for t, on, _ in agent.requests] == [(0.0, True), (160.0, False)]


async def test_failures_are_logged_retried_and_never_fatal(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    calls, agent, call = CallCounters(), RecordingAgent(), Call()
    agent.down = True

    async def script() -> None:
        calls.started(call)                               # type: ignore[arg-type]
        await trio.sleep(50)
        agent.down = False
        await trio.sleep(60)
        assert calls.active == 1                          # the call never noticed

    with trio.fail_after(3600):
        await _run(calls, agent, Policy(), script)
    times = [t for t, _, _ in agent.requests]
    assert times[:4] == [0.0, 5.0, 20.0, 50.0]            # backoff 5, 15, 30 s
    assert agent.requests[3][1] is True
    warnings = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]
    assert len(warnings) == 3
    assert "connection refused" in warnings[0].getMessage()
    assert "retrying in 5 s" in warnings[0].getMessage()


async def test_gives_up_after_the_longest_hold_and_rearms_when_idle(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    calls, agent = CallCounters(), RecordingAgent()
    calls_in_a_row = [Call() for _ in range(40)]

    async def script() -> None:
        # back-to-back calls for 200 minutes: the task is never idle
        for number, call in enumerate(calls_in_a_row[:-1]):
            calls.started(call)                           # type: ignore[arg-type]
            if number:
                calls.finished(calls_in_a_row[number - 1])  # type: ignore[arg-type]
            await trio.sleep(300)
        calls.finished(calls_in_a_row[-2])                # type: ignore[arg-type]
        await trio.sleep(60)                              # idle: re-armed
        calls.started(calls_in_a_row[-1])                 # type: ignore[arg-type]
        await trio.sleep(1)

    with trio.fail_after(50_000):
        await _run(calls, agent, Policy(max_hold_minutes=60), script)
    renewals = [t for t, on, _ in agent.requests if on]
    assert max(t for t in renewals if t < 39 * 300) < 60 * 60          # stopped at the cap
    assert renewals[-1] == 39 * 300 + 60                                # armed again
    assert "held for 60 minutes" in caplog.text


async def test_shared_task_never_releases_it_lets_the_hold_lapse(
        autojump_clock: trio.testing.MockClock) -> None:
    calls, agent, call = CallCounters(), RecordingAgent(), Call()

    async def script() -> None:
        calls.started(call)                               # type: ignore[arg-type]
        await trio.sleep(60)
        calls.finished(call)                              # type: ignore[arg-type]
        await trio.sleep(3600)

    with trio.fail_after(10_000):
        await _run(calls, agent, Policy(shared=True), script)
    assert [on for _, on, _ in agent.requests] == [True]


async def test_stopping_releases_a_hold(autojump_clock: trio.testing.MockClock) -> None:
    calls, agent, call = CallCounters(), RecordingAgent(), Call()

    async def script() -> None:
        calls.started(call)                               # type: ignore[arg-type]
        await trio.sleep(5)

    with trio.fail_after(60):
        await _run(calls, agent, Policy(), script)
    assert [(t, on) for t, on, _ in agent.requests] == [(0.0, True), (5.0, False)]


# ---------------------------------------------------------------- unsaved writes


async def test_unsaved_writes_keep_the_hold_after_the_last_call(
        autojump_clock: trio.testing.MockClock) -> None:
    """A store outage: the call ends with its writes still queued; the task stays protected
    until they are in, and is released ``idle_release_s`` after the queue drained."""
    calls, agent, call, queue = CallCounters(), RecordingAgent(), Call(), Queue()

    async def script() -> None:
        calls.started(call)                               # type: ignore[arg-type]
        await trio.sleep(10)
        queue.pending = 3
        await trio.sleep(50)
        calls.finished(call)                              # type: ignore[arg-type]
        await trio.sleep(640)                             # idle calls, writes waiting
        queue.pending = 0                                 # at 700: the store is back
        await trio.sleep(100)

    with trio.fail_after(3600):
        await _run(calls, agent, Policy(idle_release_s=30), script, queue)
    renew_every = EXPIRES_MINUTES * 60 - RENEW_BEFORE_S
    assert [(t, on) for t, on, _ in agent.requests] == [
        (0.0, True), (renew_every, True), (730.0, False)]


async def test_writes_queued_while_idle_take_and_keep_the_hold(
        autojump_clock: trio.testing.MockClock) -> None:
    calls, agent, call, queue = CallCounters(), RecordingAgent(), Call(), Queue()

    async def script() -> None:
        await trio.sleep(100)
        queue.pending = 2                                 # no call: writes alone hold it
        await trio.sleep(50)
        queue.pending = 0
        await trio.sleep(60)                              # released at 180
        calls.started(call)                               # type: ignore[arg-type]
        await trio.sleep(40)
        calls.finished(call)                              # type: ignore[arg-type]
        await trio.sleep(10)
        queue.pending = 1                                 # inside the idle countdown
        await trio.sleep(100)
        queue.pending = 0
        await trio.sleep(31)

    with trio.fail_after(3600):
        await _run(calls, agent, Policy(idle_release_s=30), script, queue)
    assert [(t, on) for t, on, _ in agent.requests] == [
        (100.0, True), (180.0, False), (210.0, True), (390.0, False)]


async def test_writes_queued_while_the_release_is_in_flight_take_the_hold_again(
        autojump_clock: trio.testing.MockClock) -> None:
    """The agent takes a second to answer; a write queued meanwhile is seen at its answer,
    not an hour later."""
    calls, agent, call, queue = CallCounters(), RecordingAgent(latency_s=1.0), Call(), Queue()

    async def script() -> None:
        calls.started(call)                               # type: ignore[arg-type]
        await trio.sleep(60)
        calls.finished(call)                              # type: ignore[arg-type]
        await trio.sleep(30.5)                            # the release was asked at 90
        queue.pending = 1
        await trio.sleep(10)

    with trio.fail_after(3600):
        await _run(calls, agent, Policy(idle_release_s=30), script, queue)
    assert [(t, on) for t, on, _ in agent.requests] == [
        (0.0, True), (90.0, False), (91.0, True), (100.5, False)]        # the last: stopping


async def test_a_queue_that_drains_while_calls_run_changes_nothing(
        autojump_clock: trio.testing.MockClock) -> None:
    calls, agent, call, queue = CallCounters(), RecordingAgent(), Call(), Queue()

    async def script() -> None:
        calls.started(call)                               # type: ignore[arg-type]
        for _ in range(5):                                # turns written one by one
            await trio.sleep(10)
            queue.pending = 4
            await trio.sleep(10)
            queue.pending = 0
        await trio.sleep(100)
        queue.pending = 2                                 # the last turn's, store slow
        calls.finished(call)                              # type: ignore[arg-type]
        await trio.sleep(45)
        queue.pending = 0
        await trio.sleep(31)

    with trio.fail_after(3600):
        await _run(calls, agent, Policy(idle_release_s=30), script, queue)
    assert [(t, on) for t, on, _ in agent.requests] == [(0.0, True), (275.0, False)]


async def test_a_backlog_that_never_drains_is_given_up_at_the_longest_hold(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    calls, agent, queue = CallCounters(), RecordingAgent(), Queue()

    async def script() -> None:
        queue.pending = 7                                 # a store down for 200 minutes
        await trio.sleep(200 * 60)
        queue.pending = 0                                 # idle: re-armed
        await trio.sleep(60)
        queue.pending = 1
        await trio.sleep(1)

    with trio.fail_after(50_000):
        await _run(calls, agent, Policy(max_hold_minutes=60), script, queue)
    sets = [t for t, on, _ in agent.requests if on]
    assert max(t for t in sets if t < 200 * 60) < 60 * 60             # stopped at the cap
    assert sets[-1] == 200 * 60 + 60                                    # armed again
    (warning,) = [r for r in caplog.records if "held for 60 minutes" in r.getMessage()]
    assert warning.__dict__["pending_writes"] == 7


async def test_shared_task_renews_for_unsaved_writes_and_lets_the_hold_lapse(
        autojump_clock: trio.testing.MockClock) -> None:
    calls, agent, call, queue = CallCounters(), RecordingAgent(), Call(), Queue()

    async def script() -> None:
        calls.started(call)                               # type: ignore[arg-type]
        queue.pending = 1
        await trio.sleep(60)
        calls.finished(call)                              # type: ignore[arg-type]
        await trio.sleep(900)
        queue.pending = 0
        await trio.sleep(3600)

    with trio.fail_after(10_000):
        await _run(calls, agent, Policy(shared=True), script, queue)
    renew_every = EXPIRES_MINUTES * 60 - RENEW_BEFORE_S
    assert [(t, on) for t, on, _ in agent.requests] == [
        (n * renew_every, True) for n in range(3)]                      # 0, 360, 720


async def test_the_real_queue_holds_the_task_through_a_store_outage(
        autojump_clock: trio.testing.MockClock) -> None:
    """The write-behind queue itself, over a store that fails and then recovers: the call's
    history waits in memory past its end, and the task is released only after it landed."""
    store = FakeStore()
    store.down = True
    writer = WriteBehind(store, jitter=lambda: 1.0)
    calls, agent, call = CallCounters(), RecordingAgent(), Call()

    async def script() -> None:
        calls.started(call)                               # type: ignore[arg-type]
        for turn in range(3):
            await trio.sleep(20)
            writer.submit({"pk": "CA1", "sk": f"chat::{turn:04d}"}, call_sid="CA1")
        calls.finished(call)                              # type: ignore[arg-type]
        assert not await writer.flush("CA1", timeout_s=5)  # the call's flush times out
        await trio.sleep(600)
        assert writer.pending == 3
        assert [on for _, on, _ in agent.requests] == [True, True]     # held, renewed
        store.down = False                                # the store is back
        await trio.sleep(60)
        assert writer.pending == 0

    with trio.fail_after(3600):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            await _run(calls, agent, Policy(idle_release_s=30), script, writer)
            nursery.cancel_scope.cancel(reason="test over")
    landed = store.attempts[-1][0]
    assert store.written == [("CA1", f"chat::{n:04d}") for n in range(3)]
    assert 665 < landed <= 670                            # within one capped backoff
    renew_every = EXPIRES_MINUTES * 60 - RENEW_BEFORE_S
    assert [(t, on) for t, on, _ in agent.requests] == [
        (0.0, True), (renew_every, True), (landed + 30, False)]


# ---------------------------------------------------------------- the HTTP client


async def test_endpoint_speaks_the_agents_protocol() -> None:
    with trio.fail_after(10):
        async with open_fake_agent() as fake:
            endpoint = AgentEndpoint(fake.uri)
            await endpoint.set(True, 10)
            assert (fake.enabled, fake.expires_minutes) == (True, 10)
            await endpoint.set(False, None)
            assert not fake.enabled
    assert [(r.method, r.path, r.body) for r in fake.requests] == [
        ("PUT", "/task-protection/v1/state", {"ProtectionEnabled": True,
                                              "ExpiresInMinutes": 10}),
        ("PUT", "/task-protection/v1/state", {"ProtectionEnabled": False})]


@pytest.mark.parametrize(("status", "reply", "says"), [
    (400, {"error": {"Arn": "arn:task", "Code": "AccessDeniedException",
                     "Message": "not authorized to perform ecs:UpdateTaskProtection"}},
     "the task role needs ecs:UpdateTaskProtection"),
    (200, {"failure": {"Arn": "arn:task", "Reason": "TASK_NOT_VALID",
                       "Detail": "task is not part of a service"}},
     "TASK_NOT_VALID task is not part of a service"),
    (500, {}, "HTTP 500"),
])
async def test_endpoint_refusals_say_why(status: int, reply: dict[str, object],
                                         says: str) -> None:
    with trio.fail_after(10):
        async with open_fake_agent() as fake:
            fake.replies.append((status, reply))
            with pytest.raises(ProtectionError, match=says):
                await AgentEndpoint(fake.uri).set(True, 10)


async def test_endpoint_unreachable_is_a_protection_error() -> None:
    with trio.fail_after(10):
        async with open_fake_agent() as fake:
            uri = fake.uri
        with pytest.raises(ProtectionError, match="not reachable"):
            await AgentEndpoint(uri, timeout_s=2).set(True, 10)


# ---------------------------------------------------------------- the real server


async def test_server_holds_protection_through_a_real_call(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with open_fake_agent() as fake:
            settings = make_settings(tmp_path, ECS_AGENT_URI=fake.uri,
                                     TASK_PROTECTION_IDLE_S="0")
            async with running_server(settings) as server:
                assert fake.requests == []
                async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                    (held,) = await fake.wait_requests(1)
                    assert held.body == {"ProtectionEnabled": True,
                                         "ExpiresInMinutes": EXPIRES_MINUTES}
                    await call.say("what are your hours?")
                    assert (await call.read_reply()).closed
                    await call.hang_up()
                await fake.wait_requests(2)
                assert fake.requests[1].body == {"ProtectionEnabled": False}
                assert not fake.enabled


async def test_server_holds_protection_from_the_moment_a_socket_claims_its_call(
        tmp_path: Path) -> None:
    """A socket's token matched its call's session, its saved history still being read (a
    reconnect landing on an idle task, its store slow): it becomes a call a moment later;
    the hold waited for the call to start, so a scale-in could pick the task in between
    (found by a review). Not before the match: a replayed upgrade with a spent token must
    take no hold (``test_replay_takes_no_protection``)."""
    identity = Identity()
    with trio.fail_after(30):
        async with open_fake_agent() as fake, \
                running_server(make_settings(tmp_path)) as minting, \
                running_server(make_settings(tmp_path, ECS_AGENT_URI=fake.uri,
                                             TASK_PROTECTION_IDLE_S="0")) as server:
            token = token_in(await post_form(minting.url + "/twiml", {
                "CallSid": identity.call_sid, "From": identity.from_number,
                "To": identity.to_number}, AUTH_TOKEN))
            store, reading, answer = server.runtime.store, trio.Event(), trio.Event()
            real_query = store.query

            async def slow(pk: str, prefix: str, **kwargs: Any) -> Any:
                if (pk, prefix) == (identity.call_sid, records.CHAT_PREFIX):
                    reading.set()
                    await answer.wait()             # the store under a mass reconnect
                return await real_query(pk, prefix, **kwargs)

            store.query = slow                      # type: ignore[method-assign]
            target = RelayTarget(url=server.url.replace("http", "ws", 1) + "/relay",
                                 action="", greeting=None, attributes={},
                                 parameters={TOKEN_PARAMETER: token})
            async with trio.open_nursery() as nursery:
                async def call() -> None:
                    async with open_relay(target, identity, auth_token=AUTH_TOKEN) as relay:
                        await relay.say("what are your hours?")
                        assert (await relay.read_reply()).closed
                        await relay.hang_up()

                nursery.start_soon(call)
                await reading.wait()
                with trio.move_on_after(5):         # bounds the failure: none came
                    await fake.wait_requests(1)
                assert server.runtime.calls.active == 0     # not a call yet...
                assert [r.body for r in fake.requests] == [
                    {"ProtectionEnabled": True, "ExpiresInMinutes": EXPIRES_MINUTES}]
                answer.set()                                # ...the same hold for the call
            await fake.wait_requests(2)
    # then only releases: the call's, and on a loaded machine the shutdown's again (the
    # call's was still in its thread, unanswered, when the server stopped)
    releases = [r.body for r in fake.requests][1:]
    assert releases[:1] == [{"ProtectionEnabled": False}]
    assert all(body == {"ProtectionEnabled": False} for body in releases), releases


async def test_server_without_the_agent_or_with_it_off_asks_nothing(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with open_fake_agent() as fake:
            settings = make_settings(tmp_path, ECS_AGENT_URI=fake.uri, TASK_PROTECTION="off")
            async with running_server(settings) as server:
                async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                    await call.say("what are your hours?")
                    assert (await call.read_reply()).closed
                    await call.hang_up()
                await server.runtime.calls.wait_idle()
    assert fake.requests == []


class DownStore(MemoryStore):
    """Takes no batch while ``down``, as DynamoDB in an outage: the queue keeps them."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    async def put_many(self, items: Sequence[dict[str, Any]]) -> None:
        if self.down:
            await trio.lowlevel.checkpoint()
            raise StoreError("the store is down")
        await super().put_many(items)


async def test_the_runtime_holds_the_task_for_its_unsaved_writes(tmp_path: Path) -> None:
    store = DownStore()
    with trio.fail_after(20):
        async with open_fake_agent() as fake:
            settings = make_settings(tmp_path, ECS_AGENT_URI=fake.uri,
                                     TASK_PROTECTION_IDLE_S="0")
            async with open_runtime(settings, store=store) as runtime:
                store.down = True
                runtime.writer.submit({"pk": "CA1", "sk": "chat::0001"}, call_sid="CA1")
                (held,) = await fake.wait_requests(1)
                assert held.body == {"ProtectionEnabled": True,
                                     "ExpiresInMinutes": EXPIRES_MINUTES}
                assert runtime.calls.active == 0                  # no call: the write holds it
                store.down = False
                await fake.wait_requests(2)
                assert fake.requests[1].body == {"ProtectionEnabled": False}
                assert ("CA1", "chat::0001") in store.items
