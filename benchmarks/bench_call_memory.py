"""What a call costs the server's heap: connected and idle, then after each turn it says.

RSS at 2000 calls (issue 20) is what a process holds before its first call plus what each
call holds while it waits, and the load benchmark sees only the sum, on a noisy machine. This
measures the second part alone, and where it goes, in seconds: the real server runs in this
process (hypercorn, the relay route, the actors), N calls connect, and the heap the server's
side allocated and still holds is traced (``tracemalloc``) at each step; the callers' side,
which runs in this process too, is left out by its frames. Allocation sites are summed by the
innermost frame of ours or of a library, so trio's and hypercorn's parts show as such.

    python benchmarks/bench_call_memory.py --calls 200                  # scripted model, SQLite
    python benchmarks/bench_call_memory.py --calls 60 --stack           # local Bedrock + moto
    python benchmarks/bench_call_memory.py --calls 200 --stack --turns 0 --in-flight

``--stack`` starts the local ConverseStream endpoint and moto's DynamoDB (as bench_latency.py
does) so the turns take the Bedrock transport and the store's HTTP path; at most 8 turns run
at once, since tracing slows the process several times over. ``--in-flight`` (with
``--stack``): then every call says one more thing, and the heap is traced while all those
turns wait for the model's first token (the endpoint holds it back for a minute): what a turn
in flight costs, its model stream and connection included.
"""

from __future__ import annotations

import argparse
import gc
import inspect
import os
import sys
import tempfile
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path
from typing import Any

import trio
import trio.testing

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from voiceagent.app.testing import agent_server
from voiceagent.llm.bedrock import BedrockLLM

ROOT = str(Path(__file__).resolve().parent.parent) + "/"
CONFIG = Path(__file__).resolve().parent / "config"
CLIENT_FRAMES = ("voiceagent/app/caller.py", "voiceagent/app/testing.py", "trio_websocket/")
PROMPTS = ("Do you have a table for two tonight?", "What is on the menu for dinner today?",
           "Can you book it for eight please?", "When is my pick up ready?")
TRACE_DEPTH = 40
AT_ONCE = 8                 # turns in flight: tracing slows the server several times over
# calls connecting at once: 200 at once under tracing passed moto's 2 s for a session write
# and the 10 s a socket waits for its setup, about one run in two (thirty-fourth pass)
CONNECTING_AT_ONCE = 20
IN_FLIGHT_FIRST_TOKEN_MS = 60_000   # --in-flight: long enough to trace every turn waiting


def _is_client(frame: tracemalloc.Frame) -> bool:
    """The callers' library frames, and ``measure`` (its callers' tasks); every trace also
    passes through ``main``'s ``trio.run``, which is not the client's."""
    if frame.filename == __file__:
        return frame.lineno in _MEASURE_LINES
    return any(part in frame.filename for part in CLIENT_FRAMES)


def _server_side(snapshot: tracemalloc.Snapshot) -> list[tracemalloc.Trace]:
    return [trace for trace in snapshot.traces
            if not any(_is_client(frame) for frame in trace.traceback)]


def _site(trace: tracemalloc.Trace) -> str:
    frame = trace.traceback[-1]                 # the innermost: where the bytes were asked for
    name = frame.filename.split("site-packages/")[-1].removeprefix(ROOT)
    if name.startswith("/"):                    # the standard library: its file name is enough
        name = name.rsplit("/", 1)[-1]
    return f"{name}:{frame.lineno}"


OWNERS = (("trio", ("trio/", "trio.")), ("hypercorn, wsproto, h11", ("hypercorn/", "wsproto/",
          "h11/")), ("ours", ("voiceagent/", "actors/")))


def _owner(site: str) -> str:
    """trio's, the HTTP and WebSocket layers', ours, or the standard library's and the rest."""
    for owner, parts in OWNERS:
        if any(part in site for part in parts):
            return owner
    return "stdlib and other"


def _held(snapshot: tracemalloc.Snapshot) -> tuple[int, Counter[str]]:
    sites: Counter[str] = Counter()
    for trace in _server_side(snapshot):
        sites[_site(trace)] += trace.size
    return sum(sites.values()), sites


async def measure(calls: int, turns: int, top: int, settings: dict[str, Any],
                  in_flight: bool = False) -> None:
    async with agent_server(CONFIG, use_case="benchUseCase", MAX_CALLS=str(calls + 10),
                            MAX_CONCURRENT_TURNS=str(calls + 10), IDLE_REPROMPT_S="0",
                            **settings) as agent:
        steps = [trio.Semaphore(0) for _ in range(turns + 1)]
        go = [trio.Event() for _ in range(turns)]
        flying, sent = trio.Event(), trio.Semaphore(0)
        done = trio.Event()
        at_once = trio.Semaphore(AT_ONCE)
        connecting = trio.Semaphore(CONNECTING_AT_ONCE)

        async def caller(i: int) -> None:
            async with AsyncExitStack() as stack:
                async with connecting:      # held while it connects, not for the call
                    conversation = await stack.enter_async_context(
                        agent.call(call_sid=f"CA{i:032x}"))
                steps[0].release()
                for turn in range(turns):
                    await go[turn].wait()
                    async with at_once:
                        await conversation.say(PROMPTS[turn % len(PROMPTS)])
                    steps[turn + 1].release()
                if in_flight:
                    await flying.wait()
                    await conversation.relay.say(PROMPTS[turns % len(PROMPTS)])
                    sent.release()
                await done.wait()

        async def settled() -> tuple[int, Counter[str]]:
            await trio.testing.wait_all_tasks_blocked(0.05)
            gc.collect()
            return _held(tracemalloc.take_snapshot())

        async with trio.open_nursery() as nursery:
            warm = trio.Event()

            async def warm_up() -> None:            # the first call's one-off costs
                async with agent.call(call_sid="CA" + "f" * 32) as conversation:
                    if in_flight:                   # its stream waits, as the others will
                        await conversation.relay.say(PROMPTS[0])
                    else:
                        await conversation.say(PROMPTS[0])
                    warm.set()
                    await done.wait()

            nursery.start_soon(warm_up)
            await warm.wait()
            tracemalloc.start(TRACE_DEPTH)
            base, base_sites = await settled()
            for i in range(calls):
                nursery.start_soon(caller, i)
            held, idle_sites = base, base_sites

            def show(label: str, now: int) -> int:
                print(f"{label:>24}: {(now - base) / calls / 1024:7.1f} KiB a call "
                      f"({(now - held) / calls / 1024:+.1f})", flush=True)
                return now

            for step in range(turns + 1):
                for _ in range(calls):
                    await steps[step].acquire()
                now, last_sites = await settled()
                if step == 0:
                    idle_sites = last_sites
                held = show("connected, no turn yet" if step == 0 else f"after turn {step}",
                            now)
                if step < turns:
                    go[step].set()
            parts = [("connected and idle", idle_sites - base_sites)]
            if turns:
                parts.append((f"added by {turns} turn(s)", last_sites - idle_sites))
            if in_flight:
                flying.set()
                for _ in range(calls):
                    await sent.acquire()
                llm = agent.runtime.llm
                assert isinstance(llm, BedrockLLM)
                streams = llm.limiter   # a token a stream (the warm call's may have ended)
                while streams.borrowed_tokens < calls:
                    failed = llm.statistics().errors_by_code
                    if failed:          # that turn never waits: this loop would, for ever
                        raise SystemExit(f"a turn's model stream failed ({dict(failed)}), so "
                                         "not every turn is in flight; run it again, or "
                                         "with fewer --calls (tracing slows the server)")
                    await trio.testing.wait_all_tasks_blocked(0.01)
                now, flight_sites = await settled()
                show("a turn in flight", now)
                parts.append(("added by a turn waiting for its first token",
                              flight_sites - last_sites))
            tracemalloc.stop()
            for what, sites in parts:
                print(f"\nheld per call, {what}, by allocation site (top {top}):")
                for site, size in sites.most_common(top):
                    print(f"  {size / calls:8.0f} B  {site}")
                owners: Counter[str] = Counter()
                for site, size in sites.items():
                    owners[_owner(site)] += size
                print("  by whose code asked for it: " + ", ".join(
                    f"{owner} {size / calls / 1024:.1f} KiB"
                    for owner, size in owners.most_common()))
            done.set()


_lines, _first = inspect.getsourcelines(measure)
_MEASURE_LINES = range(_first, _first + len(_lines))


@contextmanager
def _stack_settings(use_stack: bool, first_token_ms: float) -> Iterator[dict[str, Any]]:
    if not use_stack:
        yield {}
        return
    import local_stack
    with tempfile.TemporaryDirectory() as scratch, local_stack.local_stack(
            local_stack.StackOptions(first_token_ms=first_token_ms, token_ms=2),
            Path(scratch)) as stack:
        os.environ.update(stack.env)        # the AWS settings botocore reads for itself
        yield {k: v for k, v in stack.env.items() if k in ("STORE", "LLM", "TABLE_NAME")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--turns", type=int, default=3, help="turns each call says (default 3)")
    parser.add_argument("--top", type=int, default=15, help="allocation sites listed")
    parser.add_argument("--stack", action="store_true",
                        help="the local Bedrock endpoint and moto's DynamoDB instead of the "
                             "scripted model and SQLite")
    parser.add_argument("--in-flight", action="store_true",
                        help="with --stack and --turns 0: trace every call's turn while it "
                             "waits for the model's first token")
    args = parser.parse_args()
    if args.in_flight and (not args.stack or args.turns):
        parser.error("--in-flight needs --stack and --turns 0 (the endpoint holds every "
                     "first token back for a minute)")
    first_token_ms = IN_FLIGHT_FIRST_TOKEN_MS if args.in_flight else 30
    with _stack_settings(args.stack, first_token_ms) as settings:
        print(f"{args.calls} calls, {args.turns} turns each, "
              f"{'local Bedrock + moto' if args.stack else 'scripted model + SQLite'}; "
              f"server side only, tracemalloc", flush=True)
        if args.in_flight:                  # the model's read timeout must outlast the wait
            settings["BEDROCK_READ_TIMEOUT_S"] = str(2 * IN_FLIGHT_FIRST_TOKEN_MS / 1000)
            settings["BEDROCK_FIRST_EVENT_TIMEOUT_S"] = settings["BEDROCK_READ_TIMEOUT_S"]
        trio.run(measure, args.calls, args.turns, args.top, settings, args.in_flight)


if __name__ == "__main__":
    main()
