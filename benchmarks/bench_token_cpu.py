"""CPU per relayed token: what one more token of a reply costs the server, and what a turn
and a call cost around it.

The same calls are run twice on fresh local stacks (``local_stack.py``: the local Bedrock
endpoint and local DynamoDB in their own processes), once with the benchmark use case's
replies as written and once with every reply said ``--times`` times over. The turns, calls,
webhooks, history writes and barge-ins are the same in both runs; only the tokens differ.
So, from the server's CPU time (``/proc``, summed over its workers):

* CPU per relayed token = (CPU of the long run - CPU of the short run) / (tokens - tokens):
  the model event read and decoded, the speaker, the relay writer, hypercorn's frame, their
  share of the token hold windows;
* CPU per turn = what the short run cost beyond its tokens, per turn: the prompt, the
  request signed and sent, the history, the turn summary, the writes behind; call set-up
  and hang-up are in it too, spread over the turns.

The callers and the fakes share the machine's cores, so each run is repeated ``--repeat``
times and the figures are printed per pair, then as medians.

    python benchmarks/bench_token_cpu.py --calls 200 --times 4 --repeat 3
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_latency import Plan, loaded_run
from latency_servers import pin_layout, start_servers, stop_servers
from local_stack import StackOptions, local_stack

GOAL_US = 30.0


def one_run(calls: int, plan: Plan, times: int, name: str,
            extra_env: dict[str, str]) -> dict[str, Any]:
    options = replace(plan.stack, reply_times=times)
    scratch = plan.scratch / name
    with local_stack(options, scratch) as stack:
        processes, url, _ = start_servers(stack, scratch, name, plan.workers, extra_env)
        try:
            result = loaded_run(url, calls, plan, tuple(p.pid for p in processes))
        finally:
            stop_servers(processes)
    server = result["server"] or {}
    if result["errors"] or not server:
        raise SystemExit(f"run {name}: {result['errors']} errors {result['error_kinds']}")
    return {"times": times, "cpu_s": server["cpu_s"], "tokens": result["tokens"],
            "frames": result["frames"], "turns": result["turns"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--times", type=int, default=4,
                        help="the long run says each reply this many times (default 4)")
    parser.add_argument("--repeat", type=int, default=3, help="pairs of runs (default 3)")
    parser.add_argument("--think", type=float, default=4.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--llm", choices=("bedrock", "scripted"), default="bedrock")
    parser.add_argument("--store", choices=("dynamodb", "sqlite"), default="dynamodb")
    parser.add_argument("--token-ms", type=float, default=25.0)
    parser.add_argument("--tls", action="store_true",
                        help="the local Bedrock endpoint speaks TLS, as the real one does")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="a server setting for both runs (e.g. TOKEN_HOLD_MS=0)")
    parser.add_argument("--no-pin", dest="pin", action="store_false",
                        help="let every process run on every core (default: as "
                             "bench_latency.py pins them)")
    args = parser.parse_args()
    pin_layout(args.workers, args.pin)
    if args.llm != "bedrock":
        raise SystemExit("--times needs the local Bedrock endpoint (--llm bedrock)")
    scratch = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-token-cpu-{os.getpid()}"
    plan = Plan(StackOptions(llm=args.llm, store=args.store, token_ms=args.token_ms,
                             tls=args.tls),
                workers=args.workers, think_s=args.think, ramp_per_call_s=0.02,
                scratch=scratch)
    extra = dict(item.split("=", 1) for item in args.env)
    started = time.monotonic()
    per_token, per_turn = [], []
    print(f"machine: {os.cpu_count()} cpus, {platform.machine()}, python "
          f"{platform.python_version()}; {plan.stack.describe()}; {args.calls} calls x 5 "
          f"turns, replies x1 and x{args.times}; {args.workers} server process(es)"
          + (f"; {extra}" if extra else ""))
    print(f"{'pair':>4} {'tokens x1':>10} {'cpu s':>7} {'tokens x' + str(args.times):>10} "
          f"{'cpu s':>7} {'us/token':>9} {'us/turn':>9} {'frames/token':>13}")
    for pair in range(args.repeat):
        short = one_run(args.calls, plan, 1, f"{pair}-short", extra)
        long = one_run(args.calls, plan, args.times, f"{pair}-long", extra)
        extra_tokens = long["tokens"] - short["tokens"]
        token_us = (long["cpu_s"] - short["cpu_s"]) / extra_tokens * 1e6
        turn_us = (short["cpu_s"] * 1e6 - token_us * short["tokens"]) / short["turns"]
        per_token.append(token_us)
        per_turn.append(turn_us)
        print(f"{pair:>4} {short['tokens']:>10} {short['cpu_s']:>7.2f} {long['tokens']:>10} "
              f"{long['cpu_s']:>7.2f} {token_us:>9.1f} {turn_us:>9.0f} "
              f"{long['frames'] / long['tokens']:>13.2f}")
    token = statistics.median(per_token)
    print(f"median: {token:.1f} us of server CPU per relayed token, "
          f"{statistics.median(per_turn):.0f} us per turn (calls included)")
    verdict = ("met" if token <= GOAL_US else
               f"missed by {token - GOAL_US:.1f} us ({token / GOAL_US:.1f}x)")
    print(f"CPU per relayed token: {token:.1f} us, goal {GOAL_US:g} us: {verdict}")
    print(f"done in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
