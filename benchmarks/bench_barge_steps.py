"""Interrupt -> upstream closed, counted in steps rather than milliseconds.

Under load the time from the caller's ``interrupt`` to the Bedrock socket closed is mostly
spent waiting: each time the path yields (a checkpoint, a channel hop, a task woken) it waits
behind every other call's runnable task before it runs again. Those trips are what this
counts, deterministically, in one process: one call (the real actors, ``tests.call_harness``)
on a real ``BedrockLLM`` against the local Bedrock endpoint (``tests.fake_bedrock``, on
127.0.0.1), on trio's virtual clock, with an ``Instrument`` counting from the moment the
reader's ``parse_frame`` returns the interrupt to the moment the upstream socket's
``close()`` is called (``net.Link.close_now``), and on to the endpoint reading its EOF:

* passes: trips round the scheduler's run queue (each an I/O poll and a batch of tasks);
  at 1000 busy calls each costs about the time to step every call's runnable tasks;
* steps: task steps run meanwhile, by task (the path's own and others');
* calls: Python function calls made meanwhile (``sys.setprofile``, this script's excluded).

Three moments of a reply are cut: while the model streams its first clause (the turn waits
on the upstream socket), while later words are held (``TOKEN_HOLD_MS``: the turn sleeps out
a hold window), and before the model's first event.

``--server`` counts the same path through the real server instead (hypercorn on 127.0.0.1,
a real WebSocket client playing Twilio, on the real clock), from the moment hypercorn's
stream has the whole interrupt frame, with the cut where the frame arrives
(``voiceagent/relay/first_look.py``) and without it (the reader's cut): the pass the
reader's hop costs, which the harness above does not have.

    PYTHONPATH=. python benchmarks/bench_barge_steps.py [--json] [--server]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hypercorn.protocol.h11 as h11_protocol
import trio
import trio.testing
from hypercorn.protocol.ws_stream import WebsocketBuffer, WSStream

import actors.relay_reader as relay_reader
from actors.messages import Interrupt
from tests.call_harness import open_test_call
from tests.fake_bedrock import ConnectionRecord, running_fake_bedrock, text_reply
from tests.server_harness import AUTH_TOKEN, make_settings, running_server
from voiceagent import net
from voiceagent.app.caller import open_call
from voiceagent.llm.bedrock import BedrockLLM
from voiceagent.relay import first_look

HERE = __file__
WORDS = [f" w{n}" for n in range(40)]          # no clause end: the first clause runs 60 chars


@dataclass
class Figures:
    passes_to_close: int = -1
    steps_to_close: int = -1
    calls_to_close: int = -1
    passes_to_seen: int = -1        # ... to the endpoint reading the EOF
    steps_by_task: Counter[str] = field(default_factory=Counter)
    calls_by_task: Counter[str] = field(default_factory=Counter)


class PathCounter(trio.abc.Instrument):
    """Counts from ``arm`` (the interrupt parsed) to ``closed`` (the socket's close)."""

    def __init__(self) -> None:
        self.armed = False
        self.closing = False            # past close(), until the endpoint saw it
        self.figures = Figures()
        self._passes = self._steps = self._calls = 0
        self._task = "?"
        self.connection: ConnectionRecord | None = None      # the endpoint's side

    def arm(self) -> None:
        if self.armed or self.figures.passes_to_close >= 0:
            return
        self.armed = True
        self._task = _name(trio.lowlevel.current_task())
        sys.setprofile(self._profile)

    def closed(self) -> None:
        if not self.armed:
            return
        sys.setprofile(None)
        self.armed, self.closing = False, True
        self.figures.passes_to_close = self._passes
        self.figures.steps_to_close = self._steps
        self.figures.calls_to_close = self._calls

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if self.closing and self.connection is not None and self.connection.closed_at:
            self.closing = False                # the endpoint's read of the EOF returned
            self.figures.passes_to_seen = self._passes

    def _profile(self, frame: FrameType, event: str, arg: Any) -> None:
        if event == "call" and frame.f_code.co_filename != HERE:
            self._calls += 1
            self.figures.calls_by_task[self._task] += 1

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if self.armed or self.closing:
            self._task = _name(task)
            if self.armed:
                self._steps += 1
                self.figures.steps_by_task[self._task] += 1

    def after_io_wait(self, timeout: float) -> None:
        if self.armed or self.closing:
            self._passes += 1


def _name(task: trio.lowlevel.Task) -> str:
    name = ".".join(task.name.split(".")[-2:])
    # the call's own task (the harness's) runs the relay reader
    return "call (relay reader)" if name == "<locals>.run" else name


async def _cut(counter: PathCounter, clock: trio.testing.MockClock, *, moment: str) -> Figures:
    hold_s = 0.1 if moment == "held" else 0.0
    first_s = 5.0 if moment == "before first event" else 0.3
    reply = text_reply(WORDS, gap_s=0.02, headers_delay_s=first_s if moment ==
                       "before first event" else 0.0)
    async with running_fake_bedrock(responder=lambda request: reply) as fake:
        os.environ["AWS_ENDPOINT_URL_BEDROCK_RUNTIME"] = fake.endpoint_url
        backend = BedrockLLM(region="us-east-1")
        await backend.warm_up()                 # its setup thread on real time first
        clock.autojump_threshold = 0
        try:
            async with open_test_call(backend, services_changes={"token_hold_s": hold_s}
                                      ) as call:
                call.say("what is on the menu?")
                if moment == "before first event":
                    await fake.wait_requests(1)
                    await trio.sleep(1.0)
                elif moment == "held":
                    text = ""
                    while len(text) < 70:       # the first clause out: later words held
                        text += (await call.frame()).get("token", "")
                    await trio.sleep(0.05)      # inside a hold window
                else:
                    for _ in range(3):
                        await call.frame()
                    await trio.sleep(0.005)     # between two words: the turn reads the socket
                counter.connection = fake.connections[-1]
                call.interrupt(heard=None)
                await counter.connection.closed.wait()
                await call.hang_up()
        finally:
            await backend.aclose()
    return counter.figures


async def _cut_through_server(counter: PathCounter, directory: str) -> Figures:
    reply = text_reply(WORDS, gap_s=0.02)
    async with running_fake_bedrock(responder=lambda request: reply) as fake:
        os.environ["AWS_ENDPOINT_URL_BEDROCK_RUNTIME"] = fake.endpoint_url
        backend = BedrockLLM(region="us-east-1")
        await backend.warm_up()
        settings = make_settings(Path(directory), LLM="bedrock")
        async with running_server(settings, llm=backend) as server, \
                open_call(server.url, auth_token=AUTH_TOKEN) as call:
            await call.say("what is on the menu?")
            for _ in range(3):
                await call.receive()
            counter.connection = fake.connections[-1]
            await call.interrupt()
            with trio.fail_after(10):
                await counter.connection.closed.wait()
            await call.hang_up()
    return counter.figures


def measure_server(seed: int, *, first: bool, directory: str) -> Figures:
    """Through hypercorn, with the cut where the frame arrives (``first``) or the reader's."""
    counter = _RUNNING[0] = PathCounter()
    # hypercorn's own, for ``serve`` to swap as it does (the previous run's swaps stayed)
    setattr(h11_protocol, "WSStream", WSStream)     # noqa: B010
    trio._core._run._r.seed(seed)
    random.seed(seed)
    with _first_look_installs(first):
        return trio.run(partial(_cut_through_server, counter, directory),
                        instruments=[counter])


@contextmanager
def _first_look_installs(on: bool) -> Iterator[None]:
    install = first_look.install
    if not on:
        setattr(first_look, "install", lambda: False)      # noqa: B010 (off for this run)
    try:
        yield
    finally:
        setattr(first_look, "install", install)            # noqa: B010


def _patch(counter: list[PathCounter]) -> None:
    """The two ends of the path, seen by the counter of the run in progress."""
    parse = getattr(relay_reader, "parse_frame")     # noqa: B009 (its import)

    def parse_and_arm(frame: str | bytes, *, max_bytes: int) -> Any:
        message = parse(frame, max_bytes=max_bytes)
        if isinstance(message, Interrupt):
            counter[0].arm()
        return message

    close_now = net.Link.close_now

    def close_and_count(self: net.Link) -> None:
        if not self.closed:
            counter[0].closed()
        close_now(self)

    to_message = WebsocketBuffer.to_message

    def whole_and_arm(self: WebsocketBuffer) -> dict[str, Any]:
        message = to_message(self)          # hypercorn has the whole frame, before its put
        if '"interrupt"' in str(message.get("text")):
            counter[0].arm()
        return message

    setattr(WebsocketBuffer, "to_message", whole_and_arm)   # noqa: B010 (--server's start)
    setattr(relay_reader, "parse_frame", parse_and_arm)     # noqa: B010 (the reader's)
    setattr(net.Link, "close_now", close_and_count)         # noqa: B010


_RUNNING = [PathCounter()]


def measure(moment: str, seed: int) -> Figures:
    counter = _RUNNING[0] = PathCounter()
    trio._core._run._r.seed(seed)       # the run queue's order (private; the counts are the
    random.seed(seed)                   # same for any seed so far, this pins them anyway)
    clock = trio.testing.MockClock()
    return trio.run(partial(_cut, counter, clock, moment=moment), clock=clock,
                    instruments=[counter])


def _environment(directory: str) -> None:
    """Dummy credentials and nothing of the developer's AWS setup: only 127.0.0.1 is used."""
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        del os.environ[name]
    os.environ.update({"AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
                       "AWS_SECRET_ACCESS_KEY": "not-a-secret",
                       "AWS_CONFIG_FILE": f"{directory}/no-config",
                       "AWS_SHARED_CREDENTIALS_FILE": f"{directory}/no-credentials",
                       "AWS_EC2_METADATA_DISABLED": "true", "NO_PROXY": "*"})


MOMENTS = ("streaming", "held", "before first event")
SERVER_MODES = {"server, first look": True, "server, reader's cut": False}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="the figures as JSON")
    parser.add_argument("--seeds", type=int, default=3, help="run-queue orders tried")
    parser.add_argument("--server", action="store_true",
                        help="through the real server, with and without the first look")
    args = parser.parse_args(argv)
    results: dict[str, list[Figures]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-barge-") as directory:
        _environment(directory)
        _patch(_RUNNING)
        if args.server:
            for label, first in SERVER_MODES.items():
                results[label] = [measure_server(seed, first=first, directory=directory)
                                  for seed in range(args.seeds)]
        else:
            for moment in MOMENTS:
                results[moment] = [measure(moment, seed) for seed in range(args.seeds)]
    if args.json:
        print(json.dumps({m: [vars(f) for f in figs] for m, figs in results.items()},
                         indent=2))
        return 0
    start = "frame whole in hypercorn" if args.server else "interrupt parsed"
    print(f"{start} -> upstream close() [-> endpoint read EOF], one call, "
          f"{args.seeds} {'runs' if args.server else 'run-queue orders'} (min-max)")
    print(f"{'moment':<20} {'passes':>7} {'steps':>7} {'py calls':>9} {'passes to EOF':>14}")
    for moment, figs in results.items():
        def span(values: list[int]) -> str:
            low, high = min(values), max(values)
            return str(low) if low == high else f"{low}-{high}"
        print(f"{moment:<20} {span([f.passes_to_close for f in figs]):>7} "
              f"{span([f.steps_to_close for f in figs]):>7} "
              f"{span([f.calls_to_close for f in figs]):>9} "
              f"{span([f.passes_to_seen for f in figs]):>14}")
        print(f"  first order: steps by task {dict(figs[0].steps_by_task)}, "
              f"calls by task {dict(figs[0].calls_by_task)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
