"""What one call leaves for the young collections after a turn, by actor.

Under the gate shape (issue 20) the young collections (generations 0 and 1) are the server's
longest stops, and each one takes time in proportion to the objects it walks: whatever was made
recently and is still alive. In a phone server that is mostly each call's tasks, re-armed after
a turn to wait for the next one, seconds away: their coroutines, cancel scopes and closures stay
young through a gen-0 and a gen-1 walk before they are promoted. The load benchmark shows the
pauses but is noisy; this counts the objects, which is not, so a change to the actors can be
measured in seconds.

The real server runs in this process (hypercorn, the relay route, the actors, the scripted
model, SQLite). N calls connect and say one turn each; then the heap is frozen, the collector
stopped, every call says one more turn and goes quiet, and the objects made since the freeze
that are still alive are counted. Each is put down to the first server task that reaches it
(walking only young objects, from the task's chain of awaits), so the callers' side, which
runs in this process too, is left out.

    python benchmarks/bench_young_objects.py --calls 100
"""

from __future__ import annotations

import argparse
import gc
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import trio
import trio.testing

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from voiceagent.app.testing import AgentServer, Conversation, agent_server

CONFIG = Path(__file__).resolve().parent / "config"
CLIENT_MODULES = ("voiceagent.app.caller", "voiceagent.app.testing", "trio_websocket",
                  "__main__", "bench_young_objects")
PROMPT = "Do you have a table for two tonight?"


def _chain(task: trio.lowlevel.Task) -> list[Any]:
    """The task's coroutine and everything it awaits, outermost first."""
    links: list[Any] = []
    coro: Any = task.coro
    while coro is not None:
        links.append(coro)
        if type(coro).__name__ == "coroutine_wrapper":      # ``coro.__await__()``: the
            coro = next(iter(gc.get_referents(coro)), None)  # coroutine is its one referent
            continue
        coro = (getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
                or getattr(coro, "ag_await", None))
    return links


def _tasks(root: trio.lowlevel.Task) -> list[trio.lowlevel.Task]:
    found, stack = [], [root]
    while stack:
        task = stack.pop()
        found.append(task)
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return found


def _is_client(task: trio.lowlevel.Task) -> bool:
    """The callers' side, and this script's own tasks: not the server's."""
    return task.name.startswith(CLIENT_MODULES)


def _label(task: trio.lowlevel.Task) -> str:
    """The task's function, and the innermost coroutine of ours or the server's it waits in."""
    names = [getattr(getattr(link, "cr_code", None), "co_qualname", None) for link in
             _chain(task)]
    waits = [n for n in names if n and not n.startswith(("wait_task_rescheduled", "_real"))]
    return f"{'.'.join(task.name.split('.')[-2:])} [{' > '.join(waits[-3:])}]"


def _reach(task: trio.lowlevel.Task, ids: set[int], seen: set[int]) -> list[Any]:
    """The young objects reachable from the task's chain of awaits through young objects
    only, that no task before it reached."""
    found = []
    stack = [link for link in _chain(task) if id(link) in ids]
    stack += [task] if id(task) in ids else []
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        found.append(obj)
        stack.extend(r for r in gc.get_referents(obj) if id(r) in ids and id(r) not in seen)
    return found


def attribute(young: list[Any], root: trio.lowlevel.Task) -> dict[str, Any]:
    """Young objects by the server task that holds them, and by type; then the callers'."""
    ids = {id(o) for o in young}
    by_task: Counter[str] = Counter()
    by_type: Counter[str] = Counter()
    seen: set[int] = set()
    tasks = _tasks(root)
    for task in tasks:
        if not _is_client(task):
            if not (held := _reach(task, ids, seen)):
                continue
            by_task[_label(task)] += len(held)
            by_type.update(type(obj).__qualname__ for obj in held)
    callers = sum(len(_reach(task, ids, seen)) for task in tasks if _is_client(task))
    rest = Counter(type(o).__qualname__ for o in young if id(o) not in seen)
    return {"by_task": by_task, "by_type": by_type, "server": sum(by_task.values()),
            "callers": callers, "other": len(young) - len(seen), "other_types": rest}


async def _one_turn(conversation: Conversation) -> None:
    turn = await conversation.say(PROMPT)
    if not turn.text:
        raise SystemExit(f"{conversation.call_sid}: the agent said nothing")


async def measure(calls: int) -> dict[str, Any]:
    async with agent_server(CONFIG, use_case="benchUseCase", MAX_CALLS=str(calls + 10)) as agent:
        return await _measure(agent, calls)


async def _measure(agent: AgentServer, calls: int) -> dict[str, Any]:
    conversations: list[Conversation] = []
    done = trio.Event()
    ready = trio.Semaphore(0)

    async def hold(index: int) -> None:
        async with agent.call(call_sid=f"CA{index:032d}") as conversation:
            await _one_turn(conversation)
            conversations.append(conversation)
            ready.release()
            await done.wait()

    async with trio.open_nursery() as nursery:
        for index in range(calls):
            nursery.start_soon(hold, index)
        for _ in range(calls):
            await ready.acquire()
        await trio.testing.wait_all_tasks_blocked(0.05)
        gc.collect()
        gc.freeze()
        gc.disable()
        try:
            async with trio.open_nursery() as turns:
                for conversation in conversations:
                    turns.start_soon(_one_turn, conversation)
            await trio.testing.wait_all_tasks_blocked(0.05)
            young = gc.get_objects(0)
            root = trio.lowlevel.current_root_task()
            assert root is not None                     # we are inside trio.run
            found = attribute(young, root)
            total = len(young)
            del young
        finally:
            gc.enable()
            gc.unfreeze()
        done.set()
    return {"calls": calls, "young": total, **found}


def report(result: dict[str, Any], top: int) -> None:
    calls = result["calls"]
    per = {key: result[key] / calls for key in ("young", "server", "callers", "other")}
    print(f"{calls} calls, each idle after one more turn. Young objects still alive, a call: "
          f"{per['young']:.1f} = {per['server']:.1f} held by the server's waiting tasks + "
          f"{per['callers']:.1f} by the callers' + {per['other']:.1f} reached from neither "
          "(the waiting tasks' cancel scopes, held by the old task objects; each turn's records: "
          "history, store queue, reports)")
    print(f"\nby server task, a call (top {top}):")
    for label, count in result["by_task"].most_common(top):
        print(f"  {count / calls:7.1f}  {label}")
    for title, key in (("held by the server's tasks", "by_type"),
                       ("reached from neither", "other_types")):
        print(f"\n{title}, by type, a call (top {top}):")
        for name, count in result[key].most_common(top):
            print(f"  {count / calls:7.1f}  {name}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    result = trio.run(measure, args.calls)
    report(result, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
