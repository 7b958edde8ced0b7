"""Store calls on the critical path (prompt -> first token) and write-behind lag.

Runs the real server in this process on 127.0.0.1 with the embedded SQLite store wrapped in a
counter, plays N concurrent callers for a few turns each, and reports:

- store calls made by a call's own tasks between a prompt and its first token (goal: 0);
- every other store call by who made it (the /twiml webhook, the socket's connect, the
  write-behind drainer);
- write-behind lag: the age of the oldest unwritten item, sampled every 5 ms.

    python benchmarks/bench_store_path.py --calls 20 --turns 5
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from voiceagent.app.caller import Identity, open_call
from voiceagent.app.runtime import open_runtime
from voiceagent.app.server import serve
from voiceagent.settings import Settings
from voiceagent.store.base import Item
from voiceagent.store.sqlite import open_sqlite_store


class CountingStore:
    """Delegates to a real store and records who called what, and when."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = f"counting:{inner.name}"
        self.calls: list[tuple[float, str, str]] = []      # (trio time, op, task name)

    def _note(self, op: str) -> None:
        self.calls.append((trio.current_time(), op, trio.lowlevel.current_task().name))

    async def get(self, pk: str, sk: str) -> Item | None:
        self._note("get")
        return await self.inner.get(pk, sk)  # type: ignore[no-any-return]

    async def put(self, item: Item) -> None:
        self._note("put")
        await self.inner.put(item)

    async def put_many(self, items: Sequence[Item]) -> None:
        self._note("put_many")
        await self.inner.put_many(items)

    async def put_new(self, item: Item) -> bool:
        self._note("put_new")
        return await self.inner.put_new(item)  # type: ignore[no-any-return]

    async def put_unless_newer(self, item: Item, version: str, *,
                               legacy: str | None = None) -> bool:
        self._note("put_unless_newer")
        return await self.inner.put_unless_newer(  # type: ignore[no-any-return]
            item, version, legacy=legacy)

    async def query(self, pk: str, sk_prefix: str = "", **kw: Any) -> list[Item]:
        self._note("query")
        return await self.inner.query(pk, sk_prefix, **kw)  # type: ignore[no-any-return]

    async def query_index(self, pk1: str, sk1_prefix: str = "", **kw: Any) -> list[Item]:
        self._note("query_index")
        return await self.inner.query_index(pk1, sk1_prefix, **kw)  # type: ignore[no-any-return]

    async def delete(self, pk: str, sk: str) -> None:
        self._note("delete")
        await self.inner.delete(pk, sk)

    async def aclose(self) -> None:
        await self.inner.aclose()


def who(task: str) -> str:
    if "write_behind" in task:
        return "write-behind drainer"
    if task.startswith("actors."):
        return "call actors"
    return "webhook / connect"


async def caller(url: str, turns: int, windows: list[tuple[float, float]]) -> None:
    async with open_call(url, identity=Identity(from_number="+15555550177")) as call:
        for _ in range(turns):
            start = trio.current_time()
            await call.say("what are your hours?")
            await call.receive()
            windows.append((start, trio.current_time()))
            while (frame := await call.receive()) is not None and not frame.get("last"):
                pass
        await call.hang_up()


async def run(calls: int, turns: int, data: Path) -> None:
    settings = Settings.from_env({
        "STORE": "sqlite", "LLM": "scripted", "DEMO": "1", "VALIDATE_SIGNATURES": "false",
        "DATA_DIR": str(data), "HOST": "127.0.0.1", "PORT": "0", "LOG_LEVEL": "ERROR",
        "PING_INTERVAL_S": "0", "SCRIPTED_FIRST_TOKEN_DELAY_MS": "20",
        "SCRIPTED_TOKEN_DELAY_MS": "2"})
    windows: list[tuple[float, float]] = []
    lags: list[float] = []
    async with open_sqlite_store(data / "voiceagent.db",
                                 limiter=trio.CapacityLimiter(8)) as inner:
        store = CountingStore(inner)
        async with open_runtime(settings, store=store) as runtime, \
                trio.open_nursery() as nursery:
            stop = trio.Event()
            binds = await nursery.start(lambda task_status: serve(
                runtime, host="127.0.0.1", port=0, shutdown=stop, task_status=task_status))
            store.calls.clear()                           # start-up config load aside

            async def sample() -> None:
                while True:
                    lags.append(runtime.writer.statistics().oldest_pending_age_s)
                    await trio.sleep(0.005)

            nursery.start_soon(sample)
            started = time.perf_counter()
            async with trio.open_nursery() as callers:
                for _ in range(calls):
                    callers.start_soon(caller, binds[0], turns, windows)
            await runtime.calls.wait_idle()
            await runtime.writer.flush(timeout_s=10)
            elapsed = time.perf_counter() - started
            written = runtime.writer.statistics().written
            stop.set()
            nursery.cancel_scope.cancel()
    report(store, windows, lags, calls, turns, elapsed, written)


def report(store: CountingStore, windows: list[tuple[float, float]], lags: list[float],
           calls: int, turns: int, elapsed: float, written: int) -> None:
    critical = [c for c in store.calls if who(c[2]) == "call actors"
                and any(start <= c[0] <= end for start, end in windows)]
    by_who = Counter((who(task), op) for _, op, task in store.calls)
    lags.sort()
    print(f"machine: {os.cpu_count()} cpus, {platform.machine()}, "
          f"python {platform.python_version()}")
    print(f"{calls} calls x {turns} turns in {elapsed:.1f} s; {len(windows)} turns measured")
    print(f"store calls on the critical path (prompt -> first token): {len(critical)} "
          f"= {len(critical) / max(len(windows), 1):.2f} per turn (goal 0)")
    print("all store calls, by who made them:")
    for (source, op), count in sorted(by_who.items()):
        print(f"  {source:22} {op:12} {count:6}")
    print(f"items written behind: {written}")
    print(f"write-behind lag (oldest unwritten item): p50 {lags[len(lags) // 2] * 1000:.1f} ms, "
          f"p99 {lags[int(len(lags) * 0.99)] * 1000:.1f} ms, max {lags[-1] * 1000:.1f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--turns", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-store-") as scratch:
        trio.run(run, args.calls, args.turns, Path(scratch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
