"""The task hand-offs on a turn's critical path, counted (``bench_token_calls.py --hops``).

Why: under load trio runs the runnable tasks in batches, and a task woken by another (a
channel send, a spawn, a socket becoming readable) runs in the next batch: each hand-off on
the way from a caller's prompt to the first word back waits for the batch in progress, at
500 calls a millisecond or more. The hand-offs, unlike the milliseconds, can be counted
exactly: one call on trio's virtual clock (``bench_token_calls.one_turn``'s), the run queue's
order seeded, a ``trio.abc.Instrument`` recording every task step, which step woke which task
(``task_scheduled`` inside a step: that step; outside one: the run loop, for a socket, a
timer or a thread's result), and which step read or wrote which socket (taps on trio's and
the stdlib's socket ``recv``/``send``, the benchmark's own, not the server's).

Two stretches of the turn, each from an arrival to a departure:

* ``prompt -> request``: the server's read of the prompt frame's bytes (the caller's socket)
  to its send of the model request's bytes (the endpoint's socket);
* ``first event -> frame``: its read of the bytes holding the model's first text delta
  (``contentBlockDelta``) to its send of the first ``text`` frame.

The causal path is walked back from the departure's step: to the step that woke it, or, when
the run loop woke it (a thread's result, a timer), to the same task's step that began the
wait, until the arrival's step. Hand-offs: consecutive path steps of different tasks; a path
step woken by the run loop is one too (a trip through the I/O poll). Batches: the run loop's
passes between arrival and departure. Every other server step run between them is listed too
(it shares the batches, and under load the path waits for it).
"""

from __future__ import annotations

import _socket
import gc
import inspect
import itertools
import os
import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

import trio
from bench_token_calls import Counts
from trio._socket import _SocketType  # the concrete class hypercorn's streams use

RELAY, MODEL = "relay", "model"         # the server's two sockets in a turn
INET = (socket.AF_INET, socket.AF_INET6)
_TRIO = os.path.dirname(trio.__file__) + os.sep


@dataclass
class Step:
    task: trio.lowlevel.Task
    role: str                           # bench_token_calls.GROUPS' group of the task
    batch: int                          # the run loop's pass it ran in
    woken_by: int | None                # the step that scheduled it; None: the run loop
    io: list[tuple[str, str, bytes]] = field(default_factory=list)   # (op, socket, bytes)
    parked: str = ""                    # where it waited after the step (outside trio)


class Tracer(trio.abc.Instrument):
    """Every task step while armed, what woke it, and the socket traffic inside it."""

    def __init__(self, role: Callable[[trio.lowlevel.Task], str]) -> None:
        self.role = role
        self.steps: list[Step] = []
        self.batch = 0
        self._current: int | None = None
        self._woken_by: dict[trio.lowlevel.Task, int | None] = {}
        self._endpoint_port = 0
        self._main = threading.main_thread()

    def arm(self) -> None:
        url = os.environ.get("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", "")
        self._endpoint_port = urlsplit(url).port or 0

    def disarm(self) -> None:
        """Removed inside a step, whose ``after_task_step`` it will not see."""
        self._current = None

    def after_io_wait(self, timeout: float) -> None:
        self.batch += 1

    def task_scheduled(self, task: trio.lowlevel.Task) -> None:
        self._woken_by[task] = self._current

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._current = len(self.steps)
        # a task scheduled before the tracer was armed: taken as woken by the run loop
        self.steps.append(Step(task, self.role(task), self.batch,
                               self._woken_by.pop(task, None)))

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if self._current is not None and self.steps[self._current].role == "server":
            self.steps[self._current].parked = _parked(task)
        self._current = None

    def io(self, op: str, sock: socket.socket, data: bytes) -> None:
        if (self._current is None or not data or sock.family not in INET
                or threading.current_thread() is not self._main):
            return                          # a thread's, the run loop's wake-up pair's
        try:
            peer_port = sock.getpeername()[1]
        except OSError:
            return
        which = MODEL if peer_port == self._endpoint_port else RELAY
        self.steps[self._current].io.append((op, which, bytes(data)))


_TRACERS: list[Tracer] = []            # the meter's, while one is made: the taps' reader


def _io(op: str, sock: socket.socket, data: bytes) -> None:
    if _TRACERS:
        _TRACERS[-1].io(op, sock, data)


@contextmanager
def socket_taps() -> Iterator[None]:
    """``recv``/``send`` reported to the tracer: hypercorn's go through trio's socket class
    (which holds the stdlib's methods from its import), ``voiceagent.net.Link``'s through the
    stdlib's socket class. On for the whole run: a task already waiting inside a ``recv``
    when the count starts (the server's read of the prompt) must be in a tapped one."""
    saved: list[tuple[type, str, Any]] = []

    def patch(owner: type, name: str, make: Callable[[Any], Any]) -> None:
        saved.append((owner, name, owner.__dict__.get(name, getattr(owner, name))))
        setattr(owner, name, make(saved[-1][2]))

    def tapped(op: str, raw: Callable[..., Any]) -> Callable[..., Any]:
        """``raw`` (the stdlib's C method), its bytes reported as the syscall returns."""
        def call(sock: socket.socket, *args: Any, **kwargs: Any) -> Any:
            result = raw(sock, *args, **kwargs)
            _io(op, sock, result if op == "recv" else bytes(args[0][:result]))
            return result
        return call

    def on_trio(name: str, wait: Callable[..., Any]) -> Callable[[Any], Any]:
        # trio's own wrapper (``_make_simple_sock_method_wrapper``) around a tapped method:
        # its checkpoint after the syscall is kept, the report comes before it
        raw = tapped(name, getattr(_socket.socket, name))

        def make(_: Any) -> Any:
            async def method(self: _SocketType, *args: Any, **kwargs: Any) -> Any:
                return await self._nonblocking_helper(wait, raw, *args, **kwargs)
            return method
        return make

    def on_stdlib(name: str) -> Callable[[Any], Any]:
        return lambda original: tapped(name, original)

    patch(_SocketType, "recv", on_trio("recv", trio.lowlevel.wait_readable))
    patch(_SocketType, "send", on_trio("send", trio.lowlevel.wait_writable))
    patch(socket.socket, "recv", on_stdlib("recv"))
    patch(socket.socket, "send", on_stdlib("send"))
    try:
        yield
    finally:
        _TRACERS.clear()
        for owner, name, original in reversed(saved):
            setattr(owner, name, original)


class HopMeter(Counts):
    """A ``bench_token_calls.Meter``: traces the profiled turn instead of profiling it."""

    def __init__(self, roles: dict[trio.lowlevel.Task, str]) -> None:
        super().__init__(roles)
        self.tracer = Tracer(self.role)
        _TRACERS.append(self.tracer)

    def start(self) -> None:
        # the run queue's order (private), from here: the set-up before ran on real time
        # (threads), for a varying number of batches, each drawing from this generator
        trio._core._run._r.seed(0)
        self.tracer.arm()
        trio.lowlevel.add_instrument(self.tracer)

    def stop(self) -> None:
        trio.lowlevel.remove_instrument(self.tracer)
        self.tracer.disarm()


@dataclass
class Stretch:
    name: str
    start: int                          # the arrival's step
    end: int                            # the departure's step
    path: list[int]                     # the causal path's steps, arrival first
    run_loop: set[int]                  # path steps the run loop woke (not the arrival)
    hand_offs: int
    batches: int
    others: Counter[str]                # server steps off the path, by task


def _find(steps: list[Step], after: int, op: str, which: str,
          holds: Callable[[bytes], bool] = bool) -> int:
    for index in range(after, len(steps)):
        step = steps[index]
        if step.role == "server" and any(o == op and w == which and holds(data)
                                         for o, w, data in step.io):
            return index
    raise SystemExit(f"no server {op} on the {which} socket after step {after}: the turn's "
                     "traffic was not seen (did the server or the taps change?)")


def stretch(steps: list[Step], name: str, start: int, end: int) -> Stretch:
    """The causal path from ``start`` back from ``end``; see the module's docstring."""
    path, run_loop = [end], set()
    while path[-1] != start:
        index = path[-1]
        woken_by = steps[index].woken_by
        if woken_by is None or steps[woken_by].role == "run loop":
            run_loop.add(index)
            woken_by = next((i for i in range(index - 1, start - 1, -1)
                             if steps[i].task is steps[index].task), None)
        if woken_by is None or woken_by < start:
            raise SystemExit(f"{name}: the path from step {end} back does not reach step "
                             f"{start} (it leaves at step {index}, {_name(steps[index].task)})")
        path.append(woken_by)
    path.reverse()
    on_path = set(path)
    others = Counter(_name(steps[i].task) for i in range(start, end + 1)
                     if i not in on_path and steps[i].role == "server")
    hand_offs = sum(1 for a, b in itertools.pairwise(path)
                    if b in run_loop or steps[a].task is not steps[b].task)
    return Stretch(name, start, end, path, run_loop, hand_offs,
                   steps[end].batch - steps[start].batch, others)


def stretches(steps: list[Step]) -> list[Stretch]:
    prompt = _find(steps, 0, "recv", RELAY)
    request = _find(steps, prompt, "send", MODEL)
    event = _find(steps, request, "recv", MODEL, lambda data: b"contentBlockDelta" in data)
    frame = _find(steps, event, "send", RELAY, lambda data: b'"text"' in data)
    return [stretch(steps, "prompt -> request", prompt, request),
            stretch(steps, "first event -> frame", event, frame)]


def _parked(task: trio.lowlevel.Task) -> str:
    """The innermost await outside trio's own package: what the task waits for."""
    where = "(done)"
    for frame in _await_frames(task.coro):
        path = frame.f_code.co_filename
        if path.startswith(_TRIO) or path == __file__ or _module(path) == "stdlib":
            continue
        where = f"{_module(path)}:{frame.f_lineno} {frame.f_code.co_qualname}"
    return where


def _await_frames(coro: Any) -> Iterator[FrameType]:
    """``Task.iter_await_frames``, also through an object's ``__await__`` (hypercorn's
    ``TCPServer``) and an async generator's ``asend`` (an ``asynccontextmanager``), where
    trio's walk stops: the wrapper's referent is the coroutine or the generator."""
    while coro is not None:
        frame = (getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None)
                 or getattr(coro, "gi_frame", None))
        if frame is None:
            inner = [r for r in gc.get_referents(coro)
                     if inspect.iscoroutine(r) or inspect.isasyncgen(r)]
            if not inner:
                return
            coro = inner[0]
            continue
        yield frame
        coro = (getattr(coro, "cr_await", None) or getattr(coro, "ag_await", None)
                or getattr(coro, "gi_yieldfrom", None))


def _module(path: str) -> str:
    parts = path.split(os.sep)
    for anchor in ("site-packages", "voiceagent", "actors", "benchmarks"):
        if anchor in parts:
            tail = parts[parts.index(anchor) + (anchor == "site-packages"):]
            return "/".join(tail).removesuffix(".py")
    return "stdlib"


def _name(task: trio.lowlevel.Task) -> str:
    return task.name.removeprefix("voiceagent.").removeprefix("trio.")


def report(server: str, steps: list[Step]) -> list[str]:
    """The table ``bench_token_calls.py --hops`` prints."""
    lines = [f"{server}: a turn's critical path in server task steps (one call, the virtual "
             "clock, the run queue's order seeded)",
             f"{'':<22}{'path steps':>11}{'hand-offs':>10}{'batches':>8}{'other steps':>12}"]
    found = stretches(steps)
    for part in found:
        lines.append(f"{part.name:<22}{len(part.path):>11}{part.hand_offs:>10}"
                     f"{part.batches:>8}{sum(part.others.values()):>12}")
    for part in found:
        lines.append(f"\n{part.name}: the server's steps in order (batch; * on the path, "
                     "~ woken by the run loop; where the task then waited)")
        on_path = set(part.path)
        for index in range(part.start, part.end + 1):
            step = steps[index]
            if step.role != "server":
                continue
            mark = ("*" if index in on_path else " ") + ("~" if index in part.run_loop else " ")
            lines.append(f"  {step.batch - steps[part.start].batch:>3} {mark} "
                         f"{_name(step.task):<42} {step.parked}")
    return lines


def main(server_words: int, *, minimal: bool) -> int:
    """One turn of ``server_words`` words traced, its table printed."""
    import bench_token_calls

    bench_token_calls.MINIMAL = minimal
    with socket_taps():
        meter, _, _ = bench_token_calls.measure(server_words, HopMeter)
    assert isinstance(meter, HopMeter)
    print("\n".join(report("minimal server" if minimal else "voiceagent", meter.tracer.steps)))
    return 0
