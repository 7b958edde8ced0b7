"""Healthy calls beside hostile ones: do the healthy calls keep their latency?

Starts ``voiceagent serve`` in its own process (scripted model, SQLite, signatures on), then
runs the same healthy workload twice: alone, and next to calls that flood the server with
binary frames, broken JSON, oversized frames, wrong field types and bursts of prompts.
Prints application latency (prompt sent -> first token received, minus the scripted model's
first-token delay) for both runs and the ratio. Everything stays on 127.0.0.1.

    python benchmarks/bench_hostile.py --healthy 20 --hostile 20 --turns 5
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import server_process
from trio_websocket import ConnectionClosed

from voiceagent.caller import Identity, open_call

TOKEN = "bench-token"
CALL_LIMIT_S = 60
FIRST_TOKEN_MS = 50
JUNK: list[str | bytes] = [
    b"\x00\x01\x02 binary", "{broken json", '{"type": "mystery", "x": 1}',
    '{"type": "prompt", "voicePrompt": ["not", "text"]}', "[1, 2, 3]",
    '{"type": "interrupt", "durationUntilInterruptMs": "soon"}', "x" * 60_000,
]


def start_server(data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    return server_process.start_server({
        "STORE": "sqlite", "LLM": "scripted", "DATA_DIR": str(data_dir),
        "TWILIO_AUTH_TOKEN": TOKEN, "LOG_LEVEL": "ERROR", "LOG_FORMAT": "json",
        "PING_INTERVAL_S": "0", "SCRIPTED_FIRST_TOKEN_DELAY_MS": str(FIRST_TOKEN_MS),
        "MAX_CALLS": "2000", "SCRIPTED_TOKEN_DELAY_MS": "10", "DRAIN_TIMEOUT_S": "2"})


async def healthy_call(url: str, turns: int, latencies: list[float],
                       errors: list[str]) -> None:
    caller = Identity(from_number="+15555550199")
    with trio.move_on_after(CALL_LIMIT_S) as limit:
        async with open_call(url, auth_token=TOKEN, identity=caller) as call:
            for _ in range(turns):
                sent = time.perf_counter()
                await call.say("what are your hours?")
                first = await call.receive()
                if first is None or first.get("type") != "text":
                    errors.append(f"unexpected first frame {first}")
                    return
                latencies.append((time.perf_counter() - sent) * 1000 - FIRST_TOKEN_MS)
                while (frame := await call.receive()) is not None and not frame.get("last"):
                    pass
            await call.hang_up()
    if limit.cancelled_caught:
        errors.append("healthy call did not finish in time")


async def hostile_call(url: str, stop: trio.Event, sent: list[int], closed: list[int]) -> None:
    """Junk, prompt bursts, more junk; when the server closes the socket, dial again."""
    while not stop.is_set():
        async with open_call(url, auth_token=TOKEN) as call, trio.open_nursery() as nursery:
            async def drain() -> None:
                while await call.receive() is not None:
                    pass
                closed[0] += 1
                nursery.cancel_scope.cancel()
            nursery.start_soon(drain)
            n = 0
            with contextlib.suppress(ConnectionClosed):
                while not stop.is_set():
                    if n % 30 == 0:
                        for k in range(20):                 # a burst of prompts
                            await call.say(f"flood {k}")
                    await call.send_raw(JUNK[n % len(JUNK)])
                    n += 1
                    sent[0] += 1
                    await trio.sleep(0.001)
                await call.hang_up()
            nursery.cancel_scope.cancel()


async def run_phase(url: str, healthy: int, hostile: int,
                    turns: int) -> tuple[list[float], int, int]:
    latencies: list[float] = []
    errors: list[str] = []
    sent, closed = [0], [0]
    stop = trio.Event()
    async with trio.open_nursery() as outer:
        for _ in range(hostile):
            outer.start_soon(hostile_call, url, stop, sent, closed)
        if hostile:
            await trio.sleep(1.0)                           # let the flood build up
        async with trio.open_nursery() as nursery:
            for _ in range(healthy):
                nursery.start_soon(healthy_call, url, turns, latencies, errors)
        stop.set()
        outer.cancel_scope.deadline = trio.current_time() + 10
    if errors:
        print(f"errors: {len(errors)}, first: {errors[0]}", file=sys.stderr)
    return latencies, sent[0], closed[0]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--healthy", type=int, default=20)
    parser.add_argument("--hostile", type=int, default=20)
    parser.add_argument("--turns", type=int, default=5)
    args = parser.parse_args()
    data = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-hostile-{os.getpid()}"
    process, url = start_server(data)
    try:
        alone, _, _ = trio.run(run_phase, url, args.healthy, 0, args.turns)
        beside, junk, closed = trio.run(run_phase, url, args.healthy, args.hostile, args.turns)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    print(f"machine: {os.cpu_count()} cpus, {platform.processor() or platform.machine()}, "
          f"python {platform.python_version()}")
    print(f"healthy calls {args.healthy} x {args.turns} turns; hostile calls {args.hostile} "
          f"sent {junk} junk frames during the second run; the server closed {closed} of "
          "their sockets")
    print(f"{'application latency overhead (ms)':36} {'p50':>8} {'p95':>8} {'p99':>8}")
    for label, values in (("healthy alone", alone), ("healthy beside hostile", beside)):
        print(f"{label:36} {pct(values, .5):8.2f} {pct(values, .95):8.2f} "
              f"{pct(values, .99):8.2f}")
    ratio = pct(beside, .99) / max(pct(alone, .99), 0.01)
    print(f"p99 ratio beside/alone: {ratio:.2f}  (mean {statistics.mean(beside):.2f} ms vs "
          f"{statistics.mean(alone):.2f} ms)")
    print(json.dumps({"alone_p99_ms": pct(alone, .99), "beside_p99_ms": pct(beside, .99),
                      "ratio_p99": ratio, "junk_frames": junk}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
