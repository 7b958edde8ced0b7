"""What one DynamoDB read costs the server: a Query (``/twiml``'s session read on every call,
``/action``'s relay marks, a reconnect's history) and a GetItem (the caller's profile).

Runs the store as the server opens it (``open_dynamodb_store``) against moto on 127.0.0.1,
served kept-alive as DynamoDB's front ends are (``tests/moto_kept_alive.py``), in its own
process: this process's CPU is the store's alone. Each operation runs ``--reads`` times,
``--concurrency`` at once, and is reported as this process's CPU a read (what the server
pays, the GIL included) and the wall time a read waited (p50, p99), with moto's CPU a read
beside it (the stand-in's cost, not ours). Each goes both ways, on the same table: from the
event loop, as the server sends it (``dynamodb_http``), and through boto3's client in a worker
thread (a store around a bare client: how queries went until the thirty-third pass), with
the ratio of their CPU.

    python benchmarks/bench_store_reads.py --reads 2000 --concurrency 20
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.dynamodb_support import MotoServer, aws_env, open_test_table
from voiceagent.app.procstat import read_process
from voiceagent.settings import Settings
from voiceagent.store.dynamodb import DynamoDBStore, open_dynamodb_store

CALLS = 50              # partitions, each a call's items (its session, relay marks, history)
ITEMS_A_CALL = 8


def _process_cpu_s(pid: int) -> float:
    figures = read_process(pid)
    if figures is None:
        raise SystemExit(f"moto (pid {pid}) is gone: see its log")
    return figures["cpu_s"]


async def _timed(reads: int, concurrency: int, read: Callable[[int], Awaitable[Any]],
                 moto_pid: int) -> tuple[float, float, list[float]]:
    """This process's CPU a read (us), moto's (us), and each read's wall time (ms)."""
    waits: list[float] = []
    left = iter(range(reads))

    async def reader() -> None:
        for n in left:
            started = time.perf_counter()
            await read(n)
            waits.append((time.perf_counter() - started) * 1000)

    cpu, moto = time.process_time(), _process_cpu_s(moto_pid)
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(reader)
    ours = (time.process_time() - cpu) / reads * 1e6
    return ours, (_process_cpu_s(moto_pid) - moto) / reads * 1e6, waits


def _pk(n: int) -> str:
    return f"CA{n % CALLS:032x}"


def _operations(store: DynamoDBStore) -> dict[str, Callable[[int], Awaitable[Any]]]:
    return {
        "Query, one item (a session read)": lambda n: store.query(_pk(n), "chat::", limit=1),
        f"Query, a call's {ITEMS_A_CALL} items": lambda n: store.query(_pk(n), "chat::"),
        "GetItem": lambda n: store.get(_pk(n), "chat::0000"),
    }


async def measure(store: DynamoDBStore, reads: int, concurrency: int, moto_pid: int) -> None:
    for call in range(CALLS):
        await store.put_many([{"pk": _pk(call), "sk": f"chat::{i:04d}", "role": "user",
                               "text": "I would like a table for four at eight, please."}
                              for i in range(ITEMS_A_CALL)])
    bare = DynamoDBStore(store.table_name, store._client, limiter=store._limiter)
    ways = {"loop": _operations(store), "boto3 thread": _operations(bare)}
    print(f"{reads} reads of each, {concurrency} at once; moto kept-alive, its own process; "
          f"{os.cpu_count()} cpus, python {platform.python_version()}")
    print(f"{'':36} {'':>12} {'us CPU a read':>14} {'moto us':>9} {'p50 ms':>8} "
          f"{'p99 ms':>8}")
    for name in ways["loop"]:
        cpu: dict[str, float] = {}
        for way, operations in ways.items():
            read = operations[name]
            await _timed(min(reads, 100), concurrency, read, moto_pid)   # warm: pools, caches
            cpu[way], moto, waits = await _timed(reads, concurrency, read, moto_pid)
            cuts = statistics.quantiles(waits, n=100)
            print(f"{name:36} {way:>12} {cpu[way]:14.0f} {moto:9.0f} {cuts[49]:8.2f} "
                  f"{cuts[98]:8.2f}", flush=True)
        print(f"{name:36} {'loop/thread':>12} {cpu['loop'] / cpu['boto3 thread']:14.2f}",
              flush=True)


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-store-reads-") as scratch:
        moto = MotoServer(Path(scratch) / "moto.log", kept_alive=True).start()
        try:
            os.environ.update(aws_env(moto.endpoint, Path(scratch)))
            async with open_test_table(moto.endpoint) as table:
                settings = Settings.from_env(STORE="dynamodb", TABLE_NAME=table.table_name,
                                             VALIDATE_SIGNATURES=False)
                limiter = trio.CapacityLimiter(settings.store_threads)
                assert moto.pid is not None
                async with open_dynamodb_store(settings, limiter=limiter) as store:
                    await measure(store, args.reads, args.concurrency, moto.pid)
        finally:
            moto.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=2000, help="reads of each kind")
    parser.add_argument("--concurrency", type=int, default=20, help="reads at once")
    args = parser.parse_args()
    trio.run(main_async, args)


if __name__ == "__main__":
    main()
