"""What calls leave in the oldest generation as garbage: freed only by a full collection.

The server runs full collections rarely on purpose (``voiceagent/app/heap.py``: after 1000
middle ones; one costs 0.2-0.7 s at 2000 calls), so anything that dies in a reference cycle
after it has grown old stays in memory until then, and piles up with the calls. This runs the
real server in this process, with full collections off as in the server, says N calls'
turns, then counts what a full collection would free: objects by type and module, and bytes
(``tracemalloc``). The callers run in this process too; their objects show under their own
modules (trio_websocket, the caller).

    python benchmarks/bench_old_garbage.py --calls 100                   # calls still up
    python benchmarks/bench_old_garbage.py --calls 100 --hang-up         # after they ended
    python benchmarks/bench_old_garbage.py --calls 100 --barge --stack   # barge-ins, Bedrock
    python benchmarks/bench_old_garbage.py --calls 100 --hang-up --hypercorn-as-is

``--hypercorn-as-is`` leaves out ``voiceagent/app/connection_cycle.py``: what each ended
connection left before it (issue 20).
"""

from __future__ import annotations

import argparse
import gc
import sys
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

import trio
import trio.testing

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_call_memory import CONFIG, PROMPTS, _stack_settings

from voiceagent.app import connection_cycle
from voiceagent.app.testing import agent_server

NEVER = 10**9


def _kind(obj: Any) -> str:
    kind = type(obj)
    if kind.__name__ in ("coroutine", "frame", "function"):
        code = getattr(obj, "cr_code", None) or getattr(obj, "f_code", None) or obj.__code__
        return f"{kind.__name__} {code.co_qualname}"
    return f"{kind.__module__}.{kind.__qualname__}"


async def measure(calls: int, barge: bool, hang_up: bool, top: int,
                  settings: dict[str, Any]) -> None:
    async with agent_server(CONFIG, use_case="benchUseCase", MAX_CALLS=str(calls + 10),
                            MAX_CONCURRENT_TURNS=str(calls + 10), IDLE_REPROMPT_S="0",
                            **settings) as agent:
        done, said = trio.Event(), trio.Semaphore(0)

        async def caller(i: int) -> None:
            async with agent.call(call_sid=f"CA{i:032x}") as conversation:
                await conversation.say(PROMPTS[0])
                if barge:                       # cut the second reply after its first frame
                    await conversation.relay.say(PROMPTS[1])
                    await conversation.relay.receive()
                    await conversation.relay.interrupt("What")
                await conversation.say(PROMPTS[2])
                if not hang_up:                 # counted while the call is still up
                    said.release()
                    await done.wait()
                    return
            said.release()                      # counted once the call has ended

        async with trio.open_nursery() as nursery:
            await trio.testing.wait_all_tasks_blocked(0.05)
            gc.collect()
            gc.freeze()                         # start-up's objects: not the calls'
            thresholds = gc.get_threshold()
            gc.set_threshold(thresholds[0], thresholds[1], NEVER)
            tracemalloc.start(1)
            for i in range(calls):
                nursery.start_soon(caller, i)
            for _ in range(calls):
                await said.acquire()
            await trio.testing.wait_all_tasks_blocked(0.05)
            gc.collect(1)                       # young garbage: young collections free it
            gc.set_debug(gc.DEBUG_SAVEALL)      # keep what the full one finds, to look at
            found = gc.collect(2)
            gc.set_debug(0)
            kinds = Counter(_kind(obj) for obj in gc.garbage)
            held = tracemalloc.get_traced_memory()[0]
            gc.garbage.clear()
            gc.collect()
            freed = held - tracemalloc.get_traced_memory()[0]
            tracemalloc.stop()
            gc.set_threshold(*thresholds)
            gc.unfreeze()
            state = "after they hung up" if hang_up else "still connected"
            print(f"{calls} calls, {state}: a full collection finds {found} objects "
                  f"({found / calls:.1f} a call) and frees {freed / calls / 1024:.2f} KiB "
                  "a call")
            for kind, count in kinds.most_common(top):
                print(f"  {count / calls:6.2f} a call  {kind}")
            done.set()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--barge", action="store_true",
                        help="each call barges in on its second reply")
    parser.add_argument("--hang-up", action="store_true",
                        help="count after every call has ended (default: calls still up)")
    parser.add_argument("--stack", action="store_true",
                        help="the local Bedrock endpoint and moto's DynamoDB instead of the "
                             "scripted model and SQLite")
    parser.add_argument("--hypercorn-as-is", action="store_true",
                        help="without voiceagent/app/connection_cycle.py")
    parser.add_argument("--top", type=int, default=25, help="object types listed")
    args = parser.parse_args()
    if args.hypercorn_as_is:
        connection_cycle.install = lambda: False
    with _stack_settings(args.stack, 30) as settings:
        trio.run(measure, args.calls, args.barge, args.hang_up, args.top, settings)


if __name__ == "__main__":
    main()
