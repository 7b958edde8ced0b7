"""``voiceagent bench URL``: a load generator playing Twilio against any ConversationRelay server.

N calls are started over a ramp of R seconds; each plays a script of turns (say a prompt,
say one and barge in after K words, press a key), hearing each reply out at a speaking pace
if asked (``--listen-wpm``) and pausing (``--think``), and with ``--duration`` plays it again
until all N have been up together for a while; it times what a caller would notice:

* application latency: prompt (or key) sent -> first token received;
* inter-token gap: between consecutive text frames of one reply (what the caller's TTS sees;
  a server may send several tokens in one frame);
* barge-in stop time: ``interrupt`` sent -> the last frame of the cut reply (its closer).

A progress bar on stderr shows calls done, calls active, errors and the rolling median
latency (a line every few seconds when stderr is not a terminal); at the end a table is
printed and the figures are written as JSON. Each barge-in is also recorded with its CallSid
and the moment it was sent on the system-wide monotonic clock, so a local model endpoint's
own records can tell when the upstream stream was closed after it. Tokens are counted as
words received (the scripted model streams one word per token; real models' tokens are a
little shorter), so a server that sends several tokens per frame is compared fairly with one
that sends one. With ``--server-pid`` (local processes, one per worker) the server's CPU time
and RSS are read from ``/proc`` before, during and after the run, and summed.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter, deque
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import trio

from voiceagent.app.bench_progress import progress_bar, show_progress
from voiceagent.app.bench_report import percentiles
from voiceagent.app.caller import (
    CallerError,
    Identity,
    RelayCall,
    open_call,
    open_relay,
    reconnect_target,
    webhook_limiter,
)
from voiceagent.app.procstat import read_processes

STEP_TIMEOUT_S = 15.0
CLOSER_TIMEOUT_S = 5.0          # interrupt sent -> the cut reply's closer must arrive by then
PROGRESS_INTERVAL_S = 0.5


@dataclass(frozen=True)
class Step:
    kind: str                   # "say" | "barge" | "dtmf" | "fail" (the relay session fails)
    text: str
    barge_after: int = 0        # tokens received before the interrupt

    @classmethod
    def parse_barge(cls, value: str) -> Step:
        count, sep, text = value.partition(":")
        if not sep or not count.isdigit() or int(count) < 1 or not text:
            raise argparse.ArgumentTypeError("use K:TEXT, e.g. 3:tell me a story")
        return cls("barge", text, int(count))


DEFAULT_SCRIPT = (Step("say", "what are your hours?"),)
FAIL_STEP = Step("fail", "")


@dataclass
class Figures:
    started: float = 0.0        # trio time the run began
    measure_from: float = 0.0   # turns sent before this (trio time) are not in the figures
    latency_s: list[float] = field(default_factory=list)
    gap_s: list[float] = field(default_factory=list)
    barge_stop_s: list[float] = field(default_factory=list)
    tokens: int = 0             # words received
    frames: int = 0             # text frames with content
    turns: int = 0
    calls_done: int = 0
    calls_started: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=200))
    # (CallSid, time.monotonic() when the interrupt went out): comparable across processes
    barge_ins: list[tuple[str, float]] = field(default_factory=list)
    late_tokens: list[int] = field(default_factory=list)   # words after each interrupt
    reconnect_s: list[float] = field(default_factory=list)  # socket failed -> new one set up
    arrived: int = 0            # calls connected, or failed before connecting
    gate: trio.Event = field(default_factory=trio.Event)    # every call has arrived
    # the webhooks' threads, one a call (``run_bench`` sizes it): the caller's default
    # (``caller.HTTP_THREADS``) queued a burst of /action here, and the wait was timed as
    # the server's reconnect
    webhooks: trio.CapacityLimiter = field(default_factory=lambda: webhook_limiter(1))

    def latency(self, seconds: float) -> None:
        self.latency_s.append(seconds)
        self.recent.append(seconds)


@dataclass(frozen=True)
class BenchOptions:
    url: str
    calls: int = 10
    ramp_s: float = 1.0
    script: tuple[Step, ...] = DEFAULT_SCRIPT
    auth_token: str | None = None
    server_pids: tuple[int, ...] = ()   # local server processes: CPU and RSS summed
    hold_s: float = 0.0             # stay connected (idle) after the script
    think_s: float = 0.0            # pause between turns
    think_jitter: float = 0.0       # each pause is think_s x uniform(1 - j, 1 + j)
    listen_wpm: float = 0.0         # before thinking, hear the reply out at this pace
    until_s: float = 0.0            # keep each call going (script again, or idle) this long
    measure_from_s: float = 0.0     # figures from turns sent this long after the start only
    # the "connect all, then talk" shape: no call speaks before every call is connected,
    # then each waits uniform(0, spread_s): the burst of first turns right after a ramp
    gate: bool = False
    spread_s: float = 0.0
    json_path: Path | None = None
    progress: bool = True


# ---------------------------------------------------------------------- one call


async def _turn(call: RelayCall, step: Step, figures: Figures) -> int:
    """One turn; returns the words of the reply the caller heard out (0 after a barge-in)."""
    sent = trio.current_time()
    if step.kind == "dtmf":
        await call.dtmf(step.text)
    else:
        await call.say(step.text)
    figures.turns += 1
    counted = sent >= figures.measure_from
    last_token_at: float | None = None
    received = 0
    with trio.fail_after(STEP_TIMEOUT_S):
        while True:
            frame = await call.receive()
            now = trio.current_time()
            if frame is None:
                raise CallerError("the server closed the socket mid-turn")
            if frame.get("type") == "end":
                return received
            if frame.get("type") != "text":
                continue
            if token := frame.get("token"):
                words = _words(token)
                received += words
                figures.tokens += words
                figures.frames += 1
                if counted:
                    if last_token_at is None:
                        figures.latency(now - sent)
                    else:
                        figures.gap_s.append(now - last_token_at)
                last_token_at = now
            if frame.get("last"):
                return received
            if step.kind == "barge" and received >= step.barge_after:
                break
    interrupted = trio.current_time()
    if counted:
        figures.barge_ins.append((call.identity.call_sid, time.monotonic()))
    await call.interrupt()
    late = 0                            # in flight when the interrupt left, or sent after it
    with trio.fail_after(CLOSER_TIMEOUT_S):
        while (frame := await call.receive()) is not None:
            if frame.get("type") == "text" and (token := frame.get("token")):
                late += _words(token)
                figures.tokens += _words(token)
                figures.frames += 1
            if frame.get("last") or frame.get("type") == "end":
                if counted:
                    figures.barge_stop_s.append(trio.current_time() - interrupted)
                    figures.late_tokens.append(late)
                return 0
    raise CallerError("the server closed the socket after a barge-in")


def _words(token: object) -> int:
    return len(str(token).split())


async def _one_call(options: BenchOptions, index: int, figures: Figures) -> None:
    figures.calls_started += 1
    until = figures.started + options.until_s
    try:
        identity = Identity(from_number=f"+1555{index:07d}")
        pauses = random.Random(index)           # the same pauses on every run
        async with AsyncExitStack() as stack:
            try:
                call = await stack.enter_async_context(open_call(
                    options.url, auth_token=options.auth_token, identity=identity,
                    limiter=figures.webhooks))
            finally:
                _arrived(options, figures)      # connected or failed: the gate counts both
            if options.gate:
                await figures.gate.wait()
            if options.spread_s:
                await trio.sleep(pauses.uniform(0, options.spread_s))
            heard = 0
            first = True
            while options.script:
                for step in options.script:
                    if not first:
                        await _pause(options, heard, pauses)
                    first = False
                    if step.kind == "fail":
                        call = await _reconnect(stack, options, call, figures)
                        heard = 0
                    else:
                        heard = await _turn(call, step, figures)
                if trio.current_time() >= until:
                    break                       # played once, and the time is up
            if options.until_s:
                await trio.sleep_until(until)
            if options.hold_s:
                await trio.sleep(options.hold_s)
            await call.hang_up()
    except trio.TooSlowError:
        figures.errors["timeout"] += 1
    except (CallerError, OSError) as err:
        figures.errors[type(err).__name__ + ": " + str(err)[:80]] += 1
    except Exception as err:      # one broken call is counted, the run goes on
        figures.errors[type(err).__name__ + ": " + str(err)[:80]] += 1
    finally:
        figures.calls_done += 1


async def _reconnect(stack: AsyncExitStack, options: BenchOptions, call: RelayCall,
                     figures: Figures) -> RelayCall:
    """The relay session fails; Twilio asks ``/action`` and opens the socket it answers
    with. Timed from the failure to the new socket's setup sent: the silence a caller hears
    on top of Twilio's own."""
    failed = trio.current_time()
    await call.fail()
    with trio.fail_after(STEP_TIMEOUT_S):
        target = await reconnect_target(options.url, call.identity.call_sid,
                                        call.session_id, auth_token=options.auth_token,
                                        limiter=figures.webhooks)
    # not inside the deadline's scope: the socket's nursery outlives it (its own connect
    # timeout bounds the handshake)
    again = await stack.enter_async_context(open_relay(target, call.identity,
                                                       auth_token=options.auth_token))
    if failed >= figures.measure_from:
        figures.reconnect_s.append(trio.current_time() - failed)
    return again


def _arrived(options: BenchOptions, figures: Figures) -> None:
    figures.arrived += 1
    if figures.arrived >= options.calls:
        figures.gate.set()


async def _pause(options: BenchOptions, heard_words: int, pauses: random.Random) -> None:
    """Between turns: the caller hears the reply out (``listen_wpm``), then thinks."""
    seconds = heard_words * 60 / options.listen_wpm if options.listen_wpm else 0.0
    if options.think_s:
        jitter = options.think_jitter
        seconds += options.think_s * pauses.uniform(1 - jitter, 1 + jitter)
    if seconds:
        await trio.sleep(seconds)


# ---------------------------------------------------------------------- the run


async def run_bench(options: BenchOptions, *, stream: TextIO | None = None) -> dict[str, Any]:
    stream = stream if stream is not None else sys.stderr
    bar = progress_bar(options, stream)         # first: without tqdm, fail before any call
    figures = Figures(webhooks=webhook_limiter(options.calls))
    before = read_processes(options.server_pids)
    peak_rss = before["rss_kb"] if before else 0.0
    started = trio.current_time()
    figures.started, figures.measure_from = started, started + options.measure_from_s
    wall_started = time.time()
    monotonic_started = time.monotonic()
    client_cpu_started = time.process_time()

    async def progress(cancel: trio.CancelScope) -> None:
        nonlocal peak_rss
        with cancel:
            while True:
                if now := read_processes(options.server_pids):
                    peak_rss = max(peak_rss, now["rss_kb"])
                if bar is not None:
                    show_progress(bar, figures)
                await trio.sleep(PROGRESS_INTERVAL_S)

    progress_scope = trio.CancelScope()
    try:
        async with trio.open_nursery() as outer:
            outer.start_soon(progress, progress_scope)
            async with trio.open_nursery() as nursery:
                for index in range(options.calls):
                    if index and options.ramp_s:
                        await trio.sleep_until(started + options.ramp_s * index / options.calls)
                    nursery.start_soon(_one_call, options, index, figures)
            progress_scope.cancel()
    finally:
        if bar is not None:
            show_progress(bar, figures)
            bar.close()
    duration_s = trio.current_time() - started
    client_cpu_s = time.process_time() - client_cpu_started
    after = read_processes(options.server_pids)
    result: dict[str, Any] = {
        "url": options.url, "started_at": round(wall_started, 3),
        "started_at_monotonic": monotonic_started,
        "duration_s": round(duration_s, 3), "calls": options.calls,
        "ramp_s": options.ramp_s, "measured_from_s": options.measure_from_s,
        "script": [{"kind": s.kind, "text": s.text, "barge_after": s.barge_after}
                   for s in options.script],
        "calls_completed": figures.calls_done - sum(figures.errors.values()),
        "errors": sum(figures.errors.values()), "error_kinds": dict(figures.errors),
        "turns": figures.turns, "tokens": figures.tokens, "frames": figures.frames,
        "latency_ms": percentiles(figures.latency_s),
        "inter_token_ms": percentiles(figures.gap_s),
        "barge_in_stop_ms": percentiles(figures.barge_stop_s),
        "words_after_interrupt": percentiles([float(n) for n in figures.late_tokens], 1.0),
        "reconnect_ms": percentiles(figures.reconnect_s),
        "barge_ins": [{"call_sid": sid, "sent_at_monotonic": at}
                      for sid, at in figures.barge_ins],
        # this load generator's own CPU: when it nears 100 % of a core, its timings include
        # its own queueing, and so do those of anything sharing that core
        "client_cpu_percent": round(100 * client_cpu_s / duration_s, 1) if duration_s
        else None,
        "server": None}
    if before and after:
        cpu_s = after["cpu_s"] - before["cpu_s"]
        result["server"] = {
            "pids": list(options.server_pids), "cpu_s": round(cpu_s, 3),
            "cpu_percent": round(100 * cpu_s / duration_s, 1) if duration_s else None,
            "cpu_per_token_us": round(cpu_s / figures.tokens * 1e6, 1) if figures.tokens
            else None,
            "rss_kb_before": before["rss_kb"], "rss_kb_after": after["rss_kb"],
            "rss_kb_peak": max(peak_rss, after["rss_kb"])}
    if options.json_path is not None:
        options.json_path.write_text(json.dumps(result, indent=2) + "\n")
    return result
