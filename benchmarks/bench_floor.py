"""The price list of this machine: what the smallest steps of a relayed token cost in CPU.

Every token the framework relays needs at least a model event (a trio wakeup for the local
fake, a thread hand-off for Bedrock) and, for each frame, a WebSocket send through hypercorn.
This prints those floors, measured here and now, so CPU-per-token figures can be read against
the machine they ran on:

* a trio timer wakeup, alone and with 100 tasks sharing the wakeups;
* a memory-channel hand-off between two tasks (trio's, and the one a call's actors use), and
  what a deadline adds to a receive;
* a text frame sent through hypercorn's WebSocket (a server process on 127.0.0.1, a client
  in this one reading every frame): the raw ASGI send, and ours (``encode`` + the relay
  socket), CPU of the server process per frame.

    python benchmarks/bench_floor.py
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from server_process import free_port

from actors.channel import Channel

FRAMES = 20_000


def per_call_us(started: float, count: int) -> float:
    return round((time.process_time() - started) / count * 1e6, 1)


def wakeups(tasks: int, count: int = 100) -> float:
    """CPU per trio timer wakeup with ``tasks`` tasks sleeping 25 ms in turn: on small VMs a
    lone wakeup from idle costs several times one that many share (cold caches), so CPU per
    token falls as load rises."""
    async def sleeper() -> None:
        for _ in range(count):
            await trio.sleep(0.025)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(tasks):
                nursery.start_soon(sleeper)

    started = time.process_time()
    trio.run(run)
    return per_call_us(started, tasks * count)


def hand_off(ends: Callable[[], tuple[Any, Any]], count: int = 50_000) -> float:
    """CPU per value a task sends another through an unbuffered channel, both waiting in turn:
    trio's memory channel, or the one a call's actors use (``actors/channel.py``)."""
    results: list[float] = []

    async def run() -> None:
        send, receive = ends()

        async def consume() -> None:
            async for _ in receive:
                pass

        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume)
            started = time.process_time()
            for n in range(count):
                await send.send(n)
            results.append(per_call_us(started, count))
            await send.aclose()

    trio.run(run)
    return results[0]


def deadline_cost(count: int = 50_000) -> float:
    """What a deadline adds to a receive that does not wait."""
    results: list[float] = []

    async def run() -> None:
        queue_send, queue = trio.open_memory_channel[int](math.inf)
        for n in range(2 * count):
            queue_send.send_nowait(n)
        started = time.process_time()
        for _ in range(count):
            await queue.receive()
        plain = per_call_us(started, count)
        started = time.process_time()
        for _ in range(count):
            with trio.move_on_at(trio.current_time() + 60):
                await queue.receive()
        results.append(round(per_call_us(started, count) - plain, 1))

    trio.run(run)
    return results[0]


# ------------------------------------------------------------------ the WebSocket server side


def serve(port: int, mode: str) -> None:
    """A hypercorn server whose one WebSocket route sends FRAMES text frames, then reports
    its own CPU per frame on stdout."""
    from hypercorn.config import Config
    from hypercorn.trio import serve as hypercorn_serve

    from actors.messages import Text
    from voiceagent.relay.asgi_socket import AsgiRelaySocket
    from voiceagent.relay.protocol import encode

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await receive()
        await send({"type": "websocket.accept"})
        started = time.process_time()
        if mode == "raw":
            text = encode(Text(" token"))
            for _ in range(FRAMES):
                await send({"type": "websocket.send", "text": text})
        else:
            socket = AsgiRelaySocket(receive, send)
            for _ in range(FRAMES):
                await socket.send(encode(Text(" token")))
        print(per_call_us(started, FRAMES), flush=True)
        await send({"type": "websocket.close", "code": 1000})

    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.websocket_ping_interval = None
    config.accesslog = None
    config.errorlog = None
    asgi: Any = app                 # hypercorn's ASGI types are narrower than this test app's
    trio.run(partial(hypercorn_serve, asgi, config))


def frame_cost(mode: str) -> float:
    from trio_websocket import ConnectionClosed, open_websocket_url

    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port), mode],
                              stdout=subprocess.PIPE, text=True)
    try:
        async def read_all() -> int:
            for _ in range(100):                 # until it listens
                try:
                    await (await trio.open_tcp_stream("127.0.0.1", port)).aclose()
                    break
                except OSError:
                    await trio.sleep(0.1)
            count = 0
            async with open_websocket_url(f"ws://127.0.0.1:{port}/") as ws:
                try:
                    while True:
                        await ws.get_message()
                        count += 1
                except ConnectionClosed:
                    return count
            return count

        received = trio.run(read_all)
        assert server.stdout is not None
        cost = float(server.stdout.readline())
        if received != FRAMES:
            raise SystemExit(f"the client got {received} frames, not {FRAMES}")
        return cost
    finally:
        server.terminate()
        server.wait(timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", nargs=2, metavar=("PORT", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(int(args.serve[0]), args.serve[1])
        return 0
    rows = (("trio timer wakeup, alone (25 ms apart)", wakeups(1)),
            ("trio timer wakeup, 100 tasks sharing", wakeups(100)),
            ("memory channel hand-off (task -> task)",
             hand_off(lambda: trio.open_memory_channel[int](0))),
            ("a call's channel hand-off (actors/channel)", hand_off(Channel[int](0).ends)),
            ("a deadline around a receive (extra)", deadline_cost()),
            ("WebSocket text frame, raw ASGI send", frame_cost("raw")),
            ("WebSocket text frame, encode + relay socket", frame_cost("relay")))
    print(f"machine: {os.cpu_count()} cpus, {platform.machine()}, "
          f"python {platform.python_version()}")
    print(f"{'step':<46}{'us of CPU':>10}")
    for label, value in rows:
        print(f"{label:<46}{value:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
