"""A relay socket's task holds its await chain for the whole call, so every frame in it is
paid once per connected call (at 2000 calls, each 300-byte frame is 0.6 MB). The ASGI
wrappers that only pick a route hand the route's coroutine on instead of awaiting it; only
``ctrl_c.interrupts_escape`` stays in the chain, since it must catch what the call raises."""

from __future__ import annotations

from pathlib import Path
from types import CoroutineType
from typing import Any

import pytest
import trio
import trio.testing

from voiceagent.app.testing import agent_server
from voiceagent.settings import SOURCE_CONFIG

pytestmark = pytest.mark.timeout(60)


def _tasks(nursery: trio.Nursery) -> list[trio.lowlevel.Task]:
    found = []
    for task in nursery.child_tasks:
        found.append(task)
        for child in task.child_nurseries:
            found.extend(_tasks(child))
    return found


def _chain(task: trio.lowlevel.Task) -> list[str]:
    """The qualified names of the coroutines the task is awaiting, outermost first."""
    names: list[str] = []
    awaited: Any = task.coro
    while isinstance(awaited, CoroutineType):
        names.append(awaited.cr_code.co_qualname)
        awaited = awaited.cr_await
    return names


def relay_chain() -> list[str]:
    """The await chain of the one relay socket's task in this run."""
    root = trio.lowlevel.current_root_task()
    chains = [_chain(task) for nursery in root.child_nurseries for task in _tasks(nursery)]
    relay = [chain for chain in chains if "relay" in chain]
    assert len(relay) == 1, chains
    return relay[0]


async def test_a_connected_call_awaits_through_no_routing_wrapper(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with agent_server(SOURCE_CONFIG, use_case="restaurantOrderingUseCase",
                                data_dir=tmp_path) as agent:
            async with agent.call() as call:
                assert (await call.say("When are you open?")).text
                await trio.testing.wait_all_tasks_blocked(0.05)
                relay = relay_chain()
                wrappers = [name for name in relay if name.endswith("<locals>.asgi")]
                assert wrappers == ["interrupts_escape.<locals>.asgi"], relay
