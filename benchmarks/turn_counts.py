"""The profiler behind ``bench_token_calls.py``: a turn's profile events (Python frames, C
calls, memory blocks) charged to the group of the task that caused them.

A frame in the trio thread is charged to its task's group (the server, the endpoint, the
caller, trio's run loop between tasks, the process's samplers). A thread job a task starts
while the turn is counted (``trio.to_thread.run_sync``, which ``voiceagent.threads.
run_blocking`` calls: the store's reads and writes) is profiled in its worker thread and
charged to the starting task's group, the server's as "server threads". The profiler is set
inside each job because ``threading.setprofile`` reaches only threads started after it, and
trio's worker threads are cached from the call's set-up: with it alone, that row read 0.
"""

from __future__ import annotations

import os
import sys
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import trio

ROOT = Path(__file__).resolve().parent.parent
GROUPS = ("server", "server samplers", "server threads", "endpoint", "caller", "run loop")
# process-wide tasks on a timer, not per call: per token only as the virtual clock runs longer
SAMPLERS = ("voiceagent.app.heap.watch_loop_lag",)


def _library(path: str) -> str:
    if "site-packages" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    if path.startswith(str(ROOT)):
        return path[len(str(ROOT)) + 1:].split("/", 1)[0]     # voiceagent, actors, tests
    return "stdlib"


class Counts:
    """Profile events charged to (group, library)."""

    def __init__(self, roles: dict[trio.lowlevel.Task, str]) -> None:
        self.roles = roles                  # the top-level tasks, by role
        self.frames: Counter[tuple[str, str]] = Counter()
        self.c_calls: Counter[tuple[str, str]] = Counter()
        self.blocks: Counter[str] = Counter()
        self.functions: Counter[tuple[str, str]] = Counter()   # the server's, by name
        self.callers_of: set[str] | None = None
        # every frame the server enters, charged to the nearest function of ours on its stack
        self.charged: Counter[str] = Counter()
        self._is_ours: dict[Any, bool] = {}
        self.callers: Counter[tuple[str, str]] = Counter()
        self._owner: dict[trio.lowlevel.Task, str] = {}
        self._libraries: dict[str, str] = {}
        self._blocks = 0
        self._on = False
        self._run_sync: Callable[..., Any] = trio.to_thread.run_sync
        # the meter's own frames on the thread jobs' path: their events are not counted
        self._threaded_code = Counts._threaded.__code__
        self._job_code = Counts._job.__code__
        # one lock for both threads' hooks: the GIL may switch threads inside a hook
        self._lock = threading.Lock()

    def _group(self) -> str:
        try:
            task = trio.lowlevel.current_task()
        except RuntimeError:
            return "run loop"
        return self.role(task)

    def role(self, task: trio.lowlevel.Task) -> str:
        """The group ``task`` is charged to (one of ``GROUPS``)."""
        owner = self._owner.get(task)
        if owner is None:
            owner = self._owner[task] = self._find(task)
        return owner

    def _find(self, task: trio.lowlevel.Task) -> str:
        if task.name == "bedrock read watchdog":
            return "server"
        if task.name in SAMPLERS:
            return "server samplers"
        walker: trio.lowlevel.Task | None = task
        while walker is not None:
            if walker in self.roles:
                return self.roles[walker]
            nursery = walker.parent_nursery
            walker = nursery.parent_task if nursery is not None else None
        return "run loop"                   # trio's own system tasks

    def _ours(self, code: Any) -> bool:
        ours = self._is_ours.get(code)
        if ours is None:
            ours = self._is_ours[code] = _library(code.co_filename) in ("voiceagent", "actors")
        return ours

    def hook(self, frame: FrameType, event: str, arg: Any) -> None:
        """The trio thread's profiler."""
        if (event == "call" or event == "c_call") and frame.f_code is not self._threaded_code:
            with self._lock:
                self._count(frame, event, self._group())

    def _count(self, frame: FrameType, event: str, group: str) -> None:
        path = frame.f_code.co_filename
        library = self._libraries.get(path) or self._libraries.setdefault(path, _library(path))
        if event == "c_call":
            self.c_calls[group, library] += 1
        else:
            self.frames[group, library] += 1
            if group in ("server", "server threads"):
                code = frame.f_code
                self.functions[f"{library}/{os.path.basename(code.co_filename)}",
                               code.co_qualname] += 1
                back: FrameType | None = frame
                while back is not None and not self._ours(back.f_code):
                    back = back.f_back
                self.charged[back.f_code.co_qualname if back is not None else
                             f"(none of ours: {library})"] += 1
                if self.callers_of is not None and code.co_qualname in self.callers_of:
                    chain: list[str] = []
                    back = frame.f_back
                    while back is not None and len(chain) < 4:
                        chain.append(back.f_code.co_qualname)
                        back = back.f_back
                    self.callers[code.co_qualname, " < ".join(chain)] += 1
        now = sys.getallocatedblocks()
        if now > self._blocks:
            self.blocks[group] += now - self._blocks
        self._blocks = now

    async def _threaded(self, fn: Callable[..., Any], *args: Any, **options: Any) -> Any:
        """``trio.to_thread.run_sync`` while counting: the job profiled in its thread."""
        sys.setprofile(None)                # the group's look-up is the meter's, not counted
        try:
            role = self._group()
        finally:
            sys.setprofile(self.hook)
        group = "server threads" if role == "server" else role
        return await self._run_sync(self._job, group, fn, *args, **options)

    def _job(self, group: str, fn: Callable[..., Any], *args: Any) -> Any:
        def hook(frame: FrameType, event: str, arg: Any) -> None:
            if (self._on and (event == "call" or event == "c_call")
                    and frame.f_code is not self._job_code):
                with self._lock:
                    self._count(frame, event, group)

        sys.setprofile(hook)
        try:
            return fn(*args)
        finally:
            sys.setprofile(None)

    def start(self) -> None:
        self._blocks = sys.getallocatedblocks()
        self._on = True
        self._run_sync = trio.to_thread.run_sync
        trio.to_thread.run_sync = self._threaded
        sys.setprofile(self.hook)

    def stop(self) -> None:
        sys.setprofile(None)
        trio.to_thread.run_sync = self._run_sync
        self._on = False                    # a job still running counts no more
