"""What one relayed token costs the server, counted instead of timed: Python frames, C calls
and memory blocks per token, by library, which a shared machine's noise cannot move.

One process runs the real server (hypercorn, the relay route, the real Bedrock backend), the
local Bedrock endpoint (``tests/fake_bedrock.py``) and a WebSocket caller playing Twilio, on
trio's virtual clock (autojump: each event is read and relayed before the next is due, as
at a real model's pace). One call, one turn, a reply of ``--long`` words, then the same with
``--short`` words; each turn is profiled from the prompt sent to the reply's last frame
(``sys.setprofile``: the trio thread, and each thread job started meanwhile in its worker
thread; ``turn_counts.py``). A call is charged to the task that made it: the server's tasks
(and the Bedrock read watchdog), their thread jobs (``run_blocking``: the store's), the
endpoint's, the caller's, or trio's run loop between tasks (shared: it runs every task's
wake-ups); the process's samplers (the loop-lag watch, every 100 ms whatever the calls)
apart. Per token = (long - short) / (long words - short words), so the turn's fixed costs
cancel out.

* frames: Python frames entered, a coroutine resumed included (``call`` events);
* C calls: built-in functions and methods called (``c_call`` events);
* blocks: the rises of ``sys.getallocatedblocks()`` between events, summed (a lower bound
  of the memory blocks allocated: one allocated and freed between two events is missed).

    python benchmarks/bench_token_calls.py --long 400 --short 100

``--hops`` counts instead the task hand-offs on a turn's critical path (``turn_hops.py``).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import trio  # noqa: E402
import trio.testing  # noqa: E402
from turn_counts import GROUPS, Counts  # noqa: E402  (others import them from here)

from tests.bedrock_clock import llm_on_virtual_clock  # noqa: E402
from tests.fake_bedrock import FakeBedrock, RecordedRequest, text_reply  # noqa: E402
from tests.server_harness import (  # noqa: E402
    AUTH_TOKEN,
    make_settings,
    one_use_case_config,
    running_server,
    until_started,
)
from voiceagent.app.caller import open_call  # noqa: E402

SENTENCE = ("We are open from eleven in the morning until nine at night, Tuesday through "
            "Sunday, and until ten on Fridays and Saturdays.")
USE_CASE: dict[str, Any] = {
    "name": "counted", "model": "us.amazon.nova-lite-v1:0",
    "prompt": "You tell callers when the restaurant is open.",
    "relay": {"welcomeGreeting": "Hello."}, "hold_line": "One moment, please."}
MINIMAL = False                         # --minimal: benchmarks/minimal_server.py instead
CALLERS_OF: list[str] = []             # --callers: functions whose callers are listed


def words(count: int) -> list[str]:
    """``count`` deltas as models stream them: spaces lead, clauses end in punctuation."""
    said = SENTENCE.split()
    return [("" if n == 0 else " ") + said[n % len(said)] for n in range(count)]


Meter = Callable[[dict[trio.lowlevel.Task, str]], Counts]


async def one_turn(reply_words: int, folder: Path,
                   meter: Meter = Counts) -> tuple[Counts, int, int]:
    """A call, one profiled turn of ``reply_words`` words: the counts, the tokens relayed
    (the model's deltas, each heard) and the text frames they went in. ``meter`` makes what
    starts and stops around the turn (``bench_instructions.py`` counts it in callgrind)."""
    clock = trio.lowlevel.current_clock()
    assert isinstance(clock, trio.testing.MockClock)
    deltas = words(reply_words)

    def respond(_: RecordedRequest) -> Any:
        return text_reply(deltas, gap_s=0.025, output_tokens=len(deltas))

    fake = FakeBedrock(responder=respond)
    roles: dict[trio.lowlevel.Task, str] = {}
    counts = meter(roles)
    if CALLERS_OF:
        counts.callers_of = set(CALLERS_OF)
    result: dict[str, int] = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(_role, roles, "endpoint", fake.serve)
        os.environ["AWS_ENDPOINT_URL_BEDROCK_RUNTIME"] = fake.endpoint_url
        server_ready = trio.Event()
        done = trio.Event()
        box: dict[str, Any] = {}

        async def serve() -> None:
            if MINIMAL:
                await serve_minimal()
                return
            async with llm_on_virtual_clock(clock) as llm:
                settings = make_settings(folder, CONFIG_DIR=str(one_use_case_config(
                    folder, USE_CASE)), STACK_USE_CASE="counted", LLM="bedrock",
                    AWS_REGION="us-east-1")
                async with running_server(settings, llm=llm) as server:
                    box["url"] = server.url
                    box["runtime"] = server.runtime
                    server_ready.set()
                    await done.wait()

        async def serve_minimal() -> None:
            import hypercorn.trio
            from hypercorn.config import Config
            from minimal_server import Model, make_app

            async with llm_on_virtual_clock(clock, check_history=False) as llm:
                config = Config()
                config.bind = ["127.0.0.1:0"]
                async with trio.open_nursery() as inner:
                    app = cast(Any, make_app(Model(llm, USE_CASE["model"], "counted")))
                    binds = await inner.start(partial(hypercorn.trio.serve, app, config))
                    box["url"] = binds[0]
                    server_ready.set()
                    await done.wait()
                    inner.cancel_scope.cancel()

        async def call() -> None:
            await server_ready.wait()
            # The webhook, the socket's setup and the store's threads run on real time: the
            # clock jumps (to the next event's time) only while the turn is profiled.
            clock.autojump_threshold = math.inf
            async with open_call(box["url"], auth_token=AUTH_TOKEN) as relay:
                if not MINIMAL:
                    await until_started(box["runtime"].calls, 1)
                clock.autojump_threshold = 0
                await relay.say("When are you open?")   # the first turn: set-up aside
                await relay.read_reply()
                await trio.testing.wait_all_tasks_blocked()
                counts.start()
                await relay.say("And on Sundays?")
                reply = await relay.read_reply()
                # the turn's tail (its history, its summary) runs after its last frame
                await trio.testing.wait_all_tasks_blocked()
                counts.stop()
                if "".join(reply.tokens) != "".join(deltas):
                    raise SystemExit(f"the caller heard {''.join(reply.tokens)!r}")
                result["tokens"] = len(deltas)
                result["frames"] = sum(1 for f in reply.frames if f.get("type") == "text")
                # the call's end on real time too: jumping while the store's thread wrote
                # the transcript took the call's flush past its deadline ("store flush
                # timed out"); and the server stopped once the call has ended, not under it
                clock.autojump_threshold = math.inf
                await relay.hang_up()
            if not MINIMAL:
                await box["runtime"].calls.wait_idle()
            done.set()

        await nursery.start(_role, roles, "server", _started(serve))
        await nursery.start(_role, roles, "caller", _started(call))
        await done.wait()
        nursery.cancel_scope.cancel()
    return counts, result["tokens"], result["frames"]


def _started(work: Callable[[], Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    async def run(*, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await work()
    return run


async def _role(roles: dict[trio.lowlevel.Task, str], name: str,
                work: Callable[..., Awaitable[Any]], *,
                task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """``work`` (started: it says when it is) as the task of ``name``."""
    roles[trio.lowlevel.current_task()] = name
    await work(task_status=task_status)


def _aws_env(folder: Path) -> None:
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        del os.environ[name]
    os.environ.update({
        "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "not-a-secret",
        "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(folder / "no-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(folder / "no-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true"})


def measure(reply_words: int, meter: Meter = Counts) -> tuple[Counts, int, int]:
    with tempfile.TemporaryDirectory(prefix="bench-token-calls-") as scratch:
        folder = Path(scratch)
        _aws_env(folder)
        outcome: list[tuple[Counts, int, int]] = []

        async def main() -> None:
            outcome.append(await one_turn(reply_words, folder, meter))

        trio.run(main, clock=trio.testing.MockClock())
        return outcome[0]


class Split:
    """A count's two parts: per token ((long - short) / the tokens between them) and per
    turn, tokens aside (the short turn's count less its tokens' share)."""

    def __init__(self, long: Counter[Any], short: Counter[Any], long_tokens: int,
                 short_tokens: int) -> None:
        self.long, self.short = long, short
        self.tokens, self.short_tokens = long_tokens - short_tokens, short_tokens

    def of(self, keep: Callable[[Any], bool]) -> tuple[float, float]:
        long = sum(v for k, v in self.long.items() if keep(k))
        short = sum(v for k, v in self.short.items() if keep(k))
        token = (long - short) / self.tokens
        return token, short - token * self.short_tokens

    def rows(self, limit: int, *, by_turn: bool = False) -> list[tuple[float, float, Any]]:
        """The ``limit`` keys that cost most per token (or per turn)."""
        rows = [(*self.of(_equals(key)), key) for key in self.long | self.short]
        return sorted(rows, key=lambda r: -r[1] if by_turn else -r[0])[:limit]


def _equals(key: Any) -> Callable[[Any], bool]:
    return lambda k: bool(k == key)


def _in_group(group: str) -> Callable[[Any], bool]:
    return lambda k: bool((k[0] if isinstance(k, tuple) else k) == group)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--long", type=int, default=400, help="words in the long reply")
    parser.add_argument("--short", type=int, default=100, help="words in the short reply")
    parser.add_argument("--top", type=int, default=12, help="libraries listed (default 12)")
    parser.add_argument("--functions", type=int, default=0, metavar="N",
                        help="also list the N functions the server enters most, per token "
                        "and per turn")
    parser.add_argument("--charged", type=int, default=0, metavar="N",
                        help="also list the N functions of ours whose calls cost the most "
                        "frames, their own and the libraries' they call, per token and turn")
    parser.add_argument("--callers", nargs="*", default=[], metavar="QUALNAME",
                        help="also list who calls these functions in the server")
    parser.add_argument("--minimal", action="store_true",
                        help="count benchmarks/minimal_server.py, the floor, instead")
    parser.add_argument("--hops", action="store_true",
                        help="instead of the counts: the server's task steps and hand-offs "
                        "on a turn's critical path (benchmarks/turn_hops.py), one turn of "
                        "--short words")
    args = parser.parse_args()
    if args.hops:
        import turn_hops
        return turn_hops.main(args.short, minimal=args.minimal)
    CALLERS_OF.extend(args.callers)
    global MINIMAL
    MINIMAL = args.minimal
    short, short_tokens, short_frames = measure(args.short)
    long, long_tokens, long_frames = measure(args.long)
    if long_tokens <= short_tokens:
        raise SystemExit(f"--long ({long_tokens}) must be more than --short ({short_tokens})")
    tokens = long_tokens - short_tokens
    print(f"{'minimal server' if MINIMAL else 'voiceagent'}: {long_tokens} - {short_tokens} "
          f"tokens relayed, in {long_frames} - {short_frames} text frames "
          f"({(long_frames - short_frames) / tokens:.3f} frames a token)")
    frames = Split(long.frames, short.frames, long_tokens, short_tokens)
    c_calls = Split(long.c_calls, short.c_calls, long_tokens, short_tokens)
    blocks = Split(long.blocks, short.blocks, long_tokens, short_tokens)
    print(f"\n{'':<16}{'per token':>30}{'per turn, tokens aside':>30}")
    print(f"{'':<16}" + f"{'frames':>10}{'C calls':>10}{'blocks':>10}" * 2)
    for group in GROUPS:
        parts = [split.of(_in_group(group)) for split in (frames, c_calls, blocks)]
        print(f"{group:<16}" + "".join(f"{p[0]:>10.1f}" for p in parts)
              + "".join(f"{p[1]:>10.0f}" for p in parts))
    print("\nthe server's frames and C calls by library: per token, per turn")
    libraries = Split(Counter({k: v for k, v in long.frames.items() if k[0] == "server"}),
                      Counter({k: v for k, v in short.frames.items() if k[0] == "server"}),
                      long_tokens, short_tokens)
    for _, _, (group, library) in libraries.rows(args.top):
        f, c = (split.of(_equals((group, library))) for split in (frames, c_calls))
        print(f"  {library:<20}{f[0]:>8.1f}{c[0]:>8.1f}{f[1]:>10.0f}{c[1]:>8.0f}")
    listings = []
    if args.functions:
        listings.append(("the server's functions entered",
                         Split(long.functions, short.functions, long_tokens, short_tokens),
                         args.functions))
    if args.charged:
        listings.append(("the server's frames, charged to the nearest function of ours on "
                         "the stack", Split(long.charged, short.charged, long_tokens,
                                            short_tokens), args.charged))
    if args.callers:
        listings.append(("who calls " + ", ".join(args.callers),
                         Split(long.callers, short.callers, long_tokens, short_tokens), 40))
    for title, split, limit in listings:
        for by_turn in (False, True):
            print(f"\n{title}, most {'per turn' if by_turn else 'per token'} "
                  "(per token, per turn):")
            for token, turn, key in split.rows(limit, by_turn=by_turn):
                name = " < ".join(key) if isinstance(key, tuple) else key
                print(f"  {token:>7.2f}{turn:>8.1f}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
