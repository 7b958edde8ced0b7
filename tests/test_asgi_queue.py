"""hypercorn's queue of ASGI events, on the call's own channel (voiceagent/app/asgi_queue.py):
a relay socket's reader waits on it for the whole call, so what it holds is paid once per
connected call. Real parts: hypercorn's connection task group and its ``_handle``, the real
server and a WebSocket client playing Twilio."""

from __future__ import annotations

import gc
import logging
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import hypercorn.trio.tcp_server as tcp_server
import pytest
import trio
import trio.testing
from hypercorn.config import Config
from hypercorn.trio.task_group import TaskGroup

from tests.test_relay_task_frames import relay_chain
from voiceagent.app import asgi_queue
from voiceagent.app.testing import agent_server
from voiceagent.relay import peer_close
from voiceagent.settings import SOURCE_CONFIG

pytestmark = pytest.mark.timeout(60)

QUEUES = 200


async def test_a_connected_calls_reader_waits_on_our_channel(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with agent_server(SOURCE_CONFIG, use_case="restaurantOrderingUseCase",
                                data_dir=tmp_path) as agent:
            assert tcp_server.TaskGroup is asgi_queue.LeanTaskGroup
            async with agent.call() as call:
                assert (await call.say("When are you open?")).text
                await trio.testing.wait_all_tasks_blocked(0.05)
                relay = relay_chain()
                # the socket's reader, between frames, waits on the queue hypercorn fills
                assert relay[-2:] == ["Receiver.receive", "wait_task_rescheduled"], relay
                # and the call goes on through it: a second turn, then the hang-up
                assert (await call.say("Do you deliver?")).text


async def _held_per_queue(group_class: type[TaskGroup]) -> float:
    """Bytes each connection's queue and its app task hold while the app waits for an event,
    traced from the task group's ``spawn_app`` on."""
    config = Config()
    started: list[Callable[[Any], Awaitable[None]]] = []

    async def app(scope: Any, receive: Any, send: Any, *_: Any) -> None:
        await receive()

    async def send(_: Any) -> None:
        pass

    async with group_class() as group:
        await trio.testing.wait_all_tasks_blocked()
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for _ in range(QUEUES):
                started.append(await group.spawn_app(app, config, {"type": "http"}, send))
            await trio.testing.wait_all_tasks_blocked()
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        for put in started:                    # each app takes its event and ends
            await put({"type": "http.disconnect"})
    return held / QUEUES


async def test_a_waiting_queue_holds_a_fraction_of_trios() -> None:
    hypercorns = await _held_per_queue(TaskGroup)
    ours = await _held_per_queue(asgi_queue.LeanTaskGroup)
    # each connection's app task is the same on both sides; the queue is ~2 KiB less
    assert hypercorns - ours > 1500, (hypercorns, ours)


def test_install_is_idempotent_and_refuses_what_it_does_not_know(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(tcp_server, "TaskGroup", TaskGroup)
    assert asgi_queue.install()
    assert asgi_queue.install()
    assert tcp_server.TaskGroup is asgi_queue.LeanTaskGroup

    # a release it was not written against: left alone, and said
    monkeypatch.setattr(tcp_server, "TaskGroup", TaskGroup)
    monkeypatch.setattr(peer_close, "hypercorn_release", lambda: "0.19.0")
    with caplog.at_level(logging.WARNING, logger=asgi_queue.__name__):
        assert not asgi_queue.install()
    assert tcp_server.TaskGroup is TaskGroup
    assert "each connection's event queue stays trio's" in caplog.text

    # someone else's task group in place: not replaced
    class Theirs(TaskGroup):
        pass

    monkeypatch.setattr(peer_close, "hypercorn_release", lambda: "0.18.0")
    monkeypatch.setattr(tcp_server, "TaskGroup", Theirs)
    assert not asgi_queue.install()
    assert tcp_server.TaskGroup is Theirs
