"""ECS task scale-in protection: the holder's rules in virtual time, the HTTP client against a
local fake of the ECS agent endpoint, and the real server holding it through a real call."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio
import trio.testing

from tests.fake_ecs_agent import open_fake_agent
from tests.server_harness import AUTH_TOKEN, make_settings, running_server
from voiceagent.app.caller import open_call
from voiceagent.app.runtime import CallCounters
from voiceagent.app.task_protection import (
    EXPIRES_MINUTES,
    RENEW_BEFORE_S,
    AgentEndpoint,
    Policy,
    ProtectionError,
    hold_while_busy,
)

LOGGER = "voiceagent.app.task_protection"


class RecordingAgent:
    """Every request with its virtual time; ``down`` makes requests fail as an unreachable
    agent does."""

    def __init__(self) -> None:
        self.requests: list[tuple[float, bool, int | None]] = []
        self.down = False

    async def set(self, enabled: bool, expires_minutes: int | None) -> None:
        await trio.lowlevel.checkpoint()
        self.requests.append((trio.current_time(), enabled, expires_minutes))
        if self.down:
            raise ProtectionError("ECS agent not reachable: connection refused")


class Call:
    """A stand-in for a CallReport: CallCounters only keeps it in a list."""


async def _run(calls: CallCounters, agent: RecordingAgent, policy: Policy,
               script: object) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(hold_while_busy, calls, agent, policy)
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
