"""``benchmarks/turn_counts.py``'s profiler (``bench_token_calls.py``) counts the thread jobs
a task starts in the turn. It once set ``threading.setprofile``, which reaches only threads
started after it: trio's worker threads, cached from the call's set-up, were never profiled
and the "server threads" row read 0 every run, a figure that was not measured."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_token_calls import Counts  # noqa: E402

HERE = "tests/test_turn_counts.py"


def leaf() -> int:
    return 1


def store_write() -> int:
    """A thread job of known shape: itself and three frames of this file."""
    return leaf() + leaf() + leaf()


def test_a_server_task_s_job_in_a_cached_worker_thread_is_counted_as_server_threads() -> None:
    roles: dict[trio.lowlevel.Task, str] = {}
    counts = Counts(roles)
    original = trio.to_thread.run_sync

    turn = trio.Event()

    async def server(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        roles[trio.lowlevel.current_task()] = "server"
        task_status.started()
        await turn.wait()
        await trio.to_thread.run_sync(store_write)

    async def main() -> None:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                await nursery.start(server)
                await trio.to_thread.run_sync(leaf)     # a worker thread cached before
                counts.start()
                turn.set()
            counts.stop()

    trio.run(main)
    assert counts.frames["server threads", "tests"] == 4
    assert counts.functions[HERE, "store_write"] == 1
    assert counts.functions[HERE, "leaf"] == 3
    # the meter's own frames (its run_sync, its job) and their C calls are counted nowhere
    assert not [key for key in counts.functions if key[0].startswith("benchmarks/")]
    assert not [key for key in counts.c_calls if key[0].startswith("server")
                and key[1] == "benchmarks"]
    assert trio.to_thread.run_sync is original


def started_as(nursery: trio.Nursery, roles: dict[trio.lowlevel.Task, str], role: str,
               job: Callable[[], object]) -> None:
    """A task that only runs ``job`` in a thread (no frame of this file on the trio side),
    given ``role`` before it first runs."""
    known = set(nursery.child_tasks)
    nursery.start_soon(trio.to_thread.run_sync, job)
    [task] = set(nursery.child_tasks) - known
    roles[task] = role


def test_another_task_s_job_goes_to_its_group_and_a_job_counts_nothing_after_the_stop(
        ) -> None:
    roles: dict[trio.lowlevel.Task, str] = {}
    counts = Counts(roles)
    started, release = threading.Event(), threading.Event()

    def late_job() -> int:
        started.set()
        release.wait()
        return store_write()                    # after the stop: not counted

    async def main() -> None:
        with trio.fail_after(10):
            await trio.to_thread.run_sync(leaf)     # a worker thread cached before
            counts.start()
            async with trio.open_nursery() as nursery:
                started_as(nursery, roles, "caller", store_write)
            async with trio.open_nursery() as nursery:
                started_as(nursery, roles, "server", late_job)
                await trio.to_thread.run_sync(started.wait)
                counts.stop()
                release.set()

    trio.run(main)
    assert counts.frames["caller", "tests"] == 4            # store_write, leaf three times
    assert counts.functions[HERE, "store_write"] == 0       # the caller's: not the server's
    assert counts.functions[HERE, late_job.__qualname__] == 1
    assert counts.functions[HERE, "leaf"] == 0
    assert counts.frames["server threads", "tests"] == 1
