"""Bedrock backend costs: CPU per relayed delta, and cancel -> upstream closed.

The fake Bedrock endpoint (tests/fake_bedrock.py) runs in a subprocess, so the CPU measured
here (this process's CPU time) is the client's alone: the backend (HTTP on trio sockets, read
by the consumer's task; TLS with ``--tls``), and a consumer that receives every delta.

1. Capacity: ``--streams`` concurrent streams of ``--deltas`` text deltas ``--gap-ms`` apart
   (40 deltas/s by default), on warm connections. Reported: CPU per delta, compared with the
   naive design (one blocking ``trio.from_thread.run_sync`` hop per event, run here too unless
   ``--no-naive``) and with the 90 us figure measured for it on an earlier machine.
2. Cancellation: ``--cancel-trials`` streams cancelled mid-gap after a few deltas, and a few
   cancelled while the response headers are pending. Reported: p50/p99 of trio regaining
   control, the socket closed, the attempt finished (its limiter token back), and
   the endpoint seeing the connection closed (CLOCK_MONOTONIC is shared across processes).

    /work/venv/bin/python benchmarks/bench_bedrock.py --streams 100 --deltas 100
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import boto3  # noqa: E402
import botocore  # noqa: E402
import trio  # noqa: E402

from voiceagent.llm.base import LLMRequest, StreamEnd, TextDelta  # noqa: E402
from voiceagent.llm.bedrock import BedrockLLM  # noqa: E402
from voiceagent.llm.bedrock_converse import build_converse_request  # noqa: E402

NAIVE_BASELINE_US = 90.0            # measured for the naive design before this project began


def _machine() -> str:
    model = "?"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (f"machine: {os.cpu_count()} CPUs, {model}; Python {platform.python_version()}; "
            f"boto3 {boto3.__version__}, botocore {botocore.__version__}, "
            f"trio {trio.__version__}, h11 {version('h11')}")


def _pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _ms(values: Sequence[float]) -> str:
    if not values:
        return "n/a"
    return (f"p50 {_pct(values, 0.5) * 1000:.2f} ms, p99 {_pct(values, 0.99) * 1000:.2f} ms, "
            f"max {max(values) * 1000:.2f} ms")


def _request(sid: str, model_id: str) -> LLMRequest:
    return LLMRequest(call_sid=sid, use_case="bench", model_id=model_id,
                      system=("You are a benchmark.",),
                      messages=({"role": "user", "content": [{"text": "Talk."}]},))


class Endpoint:
    """The fake Bedrock endpoint in a subprocess, on 127.0.0.1."""

    def __init__(self, *, tls: bool = False) -> None:
        self._dir = tempfile.TemporaryDirectory()
        port_file = Path(self._dir.name) / "port"
        self.ca_file = Path(self._dir.name) / "ca.pem" if tls else None
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.fake_bedrock", "--port-file", str(port_file),
             *(["--tls", str(self.ca_file)] if self.ca_file else [])],
            cwd=ROOT, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not port_file.exists() or not port_file.read_text():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("the fake endpoint did not start")
            time.sleep(0.05)
        port = port_file.read_text()
        self.url = f"https://localhost:{port}" if tls else f"http://127.0.0.1:{port}"

    def stats(self) -> dict[str, Any]:
        context = ssl.create_default_context(cafile=str(self.ca_file)) if self.ca_file else None
        with urllib.request.urlopen(self.url + "/stats", timeout=30, context=context) as answer:
            stats: dict[str, Any] = json.loads(answer.read())
        return stats

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        self._dir.cleanup()


# ---------------------------------------------------------------------------- capacity

class _Window:
    """CPU and deltas between the moment every stream has its first delta and the moment
    the first stream ends: streaming only, without the cost of signing and sending requests."""

    def __init__(self, streams: int) -> None:
        self.waiting_first = streams
        self.deltas = 0
        self.start: tuple[float, int] | None = None
        self.end: tuple[float, int] | None = None

    def first(self) -> None:
        self.waiting_first -= 1
        if self.waiting_first == 0:
            self.start = (time.process_time(), self.deltas)

    def stream_done(self) -> None:
        if self.end is None and self.start is not None:
            self.end = (time.process_time(), self.deltas)

    def per_delta_us(self) -> float | None:
        if self.start is None or self.end is None or self.end[1] == self.start[1]:
            return None
        return (self.end[0] - self.start[0]) / (self.end[1] - self.start[1]) * 1e6


async def _consume(llm: BedrockLLM, sid: str, model_id: str, gaps: list[float],
                   firsts: list[float], window: _Window) -> int:
    count = 0
    started = last = time.perf_counter()
    async with llm.stream(_request(sid, model_id)) as events:
        async for item in events:
            if isinstance(item, TextDelta):
                now = time.perf_counter()
                window.deltas += 1
                if count:
                    gaps.append(now - last)
                else:
                    firsts.append(now - started)
                    window.first()
                last = now
                count += 1
            elif isinstance(item, StreamEnd):
                window.stream_done()
    return count


async def capacity(llm: BedrockLLM, streams: int, deltas: int, gap_ms: int) -> float:
    async def round_of(model_id: str, tag: str, gaps: list[float], firsts: list[float]
                       ) -> tuple[int, float, float, _Window]:
        counts: list[int] = []
        window = _Window(streams)

        async def one(n: int) -> None:
            counts.append(await _consume(llm, f"{tag}{n}", model_id, gaps, firsts, window))

        cpu, wall = time.process_time(), time.perf_counter()
        async with trio.open_nursery() as nursery:
            for n in range(streams):
                nursery.start_soon(one, n)
        return sum(counts), time.process_time() - cpu, time.perf_counter() - wall, window

    await round_of(f"bench.d5.g{gap_ms}", "warm", [], [])        # connections and threads
    gaps: list[float] = []
    firsts: list[float] = []
    total, cpu_s, wall_s, window = await round_of(f"bench.d{deltas}.g{gap_ms}", "cap", gaps,
                                                  firsts)
    per_delta_us = cpu_s / total * 1e6
    steady = window.per_delta_us()
    print(f"capacity: {streams} streams x {deltas} deltas, {gap_ms} ms apart "
          f"({1000 / gap_ms:.0f} deltas/s each)")
    print(f"  deltas received {total} of {streams * deltas} in {wall_s:.2f} s wall "
          f"(ideal {deltas * gap_ms / 1000:.2f} s); process CPU {cpu_s:.3f} s "
          f"= {cpu_s / wall_s * 100:.0f}% of one core")
    print(f"  CPU per delta, whole run (requests included): {per_delta_us:.1f} us")
    print(f"  CPU per delta, steady streaming:              "
          f"{'n/a' if steady is None else f'{steady:.1f} us'}")
    print(f"  first delta: {_ms(firsts)}")
    print(f"  gap between deltas: {_ms(gaps)}")
    return per_delta_us


async def naive_capacity(streams: int, deltas: int, gap_ms: int) -> float:
    """The design first measured at ~90 us: one thread per stream, each event
    handed to trio with a blocking ``from_thread.run_sync`` hop, botocore's event parser."""
    client = await trio.to_thread.run_sync(lambda: boto3.session.Session().client(
        "bedrock-runtime", region_name="us-east-1", config=botocore.config.Config(
            max_pool_connections=streams + 10,
            retries={"mode": "standard", "total_max_attempts": 1})))
    limiter = trio.CapacityLimiter(streams + 10)

    async def one(model_id: str, sid: str, counts: list[int], window: _Window) -> None:
        payload = build_converse_request(_request(sid, model_id))
        send, receive = trio.open_memory_channel[Any](math.inf)

        def worker() -> None:
            response = client.converse_stream(**payload)
            try:
                for event in response["stream"]:
                    trio.from_thread.run_sync(send.send_nowait, event)
            finally:
                response["stream"].close()
                trio.from_thread.run_sync(send.close)

        count = 0
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial_to_thread(worker, limiter))
            async for event in receive:
                delta = event.get("contentBlockDelta")
                if delta is not None and "text" in delta["delta"]:
                    window.deltas += 1
                    if not count:
                        window.first()
                    count += 1
                elif "messageStop" in event:
                    window.stream_done()
        counts.append(count)

    async def round_of(model_id: str, tag: str) -> tuple[int, float, _Window]:
        counts: list[int] = []
        window = _Window(streams)
        cpu = time.process_time()
        async with trio.open_nursery() as nursery:
            for n in range(streams):
                nursery.start_soon(one, model_id, f"{tag}{n}", counts, window)
        return sum(counts), time.process_time() - cpu, window

    await round_of(f"bench.d5.g{gap_ms}", "nwarm")
    total, cpu_s, window = await round_of(f"bench.d{deltas}.g{gap_ms}", "naive")
    await trio.to_thread.run_sync(client.close)
    per_delta_us = cpu_s / total * 1e6
    steady = window.per_delta_us()
    print(f"  naive design, same load, measured here: {per_delta_us:.1f} us per delta whole "
          f"run, {'n/a' if steady is None else f'{steady:.1f} us'} steady")
    return per_delta_us


def partial_to_thread(worker: Any, limiter: trio.CapacityLimiter) -> Any:
    async def run() -> None:
        await trio.to_thread.run_sync(worker, limiter=limiter)
    return run


# ---------------------------------------------------------------------------- cancellation

async def cancellation(llm: BedrockLLM, endpoint: Endpoint, trials: int,
                       header_trials: int) -> None:
    returned: list[float] = []
    cancels: dict[str, float] = {}
    gap_s = 0.02
    for trial in range(trials + header_trials):
        before_headers = trial >= trials
        sid = f"{'hdr' if before_headers else 'mid'}{trial}"
        model_id = "bench.d10.g20.h400" if before_headers else "bench.d200.g20"
        with trio.CancelScope() as scope:
            async with llm.stream(_request(sid, model_id)) as events:
                if before_headers:
                    await trio.sleep(0.05 + random.uniform(0, 0.1))
                else:
                    for _ in range(random.randint(3, 8)):
                        await events.receive()
                    await trio.sleep(random.uniform(0.002, gap_s - 0.004))   # mid-gap
                cancels[sid] = time.perf_counter()
                scope.cancel(reason="barge-in")
                await trio.sleep_forever()
        returned.append(time.perf_counter() - cancels[sid])
        while llm.limiter.borrowed_tokens:      # noqa: ASYNC110 - no event to wait on
            await trio.sleep(0.001)
    await trio.sleep(0.2)
    stats = await trio.to_thread.run_sync(endpoint.stats)
    closed_at = {c["id"]: c["closed_at"] for c in stats["connections"]}
    seen: dict[str, list[float]] = {"mid": [], "hdr": []}
    for sent in stats["requests"]:
        sid = sent["call_sid"]
        if sid in cancels and closed_at.get(sent["connection"]) is not None:
            seen[sid[:3]].append(closed_at[sent["connection"]] - cancels[sid])
    backend = llm.statistics()
    print(f"cancellation: {trials} mid-stream trials (cancel mid-gap after 3-8 deltas), "
          f"{header_trials} before the headers")
    print(f"  trio regains control:        {_ms(returned)}")
    print(f"  socket closed (client):      {_ms(backend.cancel_to_closed_s)}")
    print(f"  attempt done (token back):   {_ms(backend.cancel_to_exit_s)}")
    print(f"  endpoint sees close, mid:    {_ms(seen['mid'])}  ({len(seen['mid'])} trials)")
    print(f"  endpoint sees close, hdrs:   {_ms(seen['hdr'])}  ({len(seen['hdr'])} trials)")
    print(f"  limiter tokens still held: {llm.limiter.borrowed_tokens}")


# ---------------------------------------------------------------------------- main

def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--deltas", type=int, default=100)
    parser.add_argument("--gap-ms", type=int, default=25)
    parser.add_argument("--cancel-trials", type=int, default=50)
    parser.add_argument("--header-trials", type=int, default=10)
    parser.add_argument("--tls", action="store_true",
                        help="the endpoint speaks TLS (a private CA, via AWS_CA_BUNDLE)")
    parser.add_argument("--no-naive", action="store_true",
                        help="skip measuring the naive design on this machine")
    args = parser.parse_args(argv)

    print(_machine())
    endpoint = Endpoint(tls=args.tls)
    print(f"endpoint: {endpoint.url} ({'TLS, private CA' if args.tls else 'plain HTTP'})")
    env = {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "not-a-secret",
           "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_CONFIG_FILE": os.devnull + "-none", "AWS_EC2_METADATA_DISABLED": "true",
           "AWS_SHARED_CREDENTIALS_FILE": os.devnull + "-none",
           "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": endpoint.url,
           **({"AWS_CA_BUNDLE": str(endpoint.ca_file)} if endpoint.ca_file else {})}
    os.environ.update(env)

    async def run() -> None:
        llm = BedrockLLM(region="us-east-1", max_concurrent_streams=args.streams + 10)
        try:
            await llm.warm_up()
            ours = await capacity(llm, args.streams, args.deltas, args.gap_ms)
            print(f"  vs the naive design's {NAIVE_BASELINE_US:.0f} us measured before "
                  f"(a faster machine): x{ours / NAIVE_BASELINE_US:.2f}")
            if not args.no_naive:
                naive = await naive_capacity(args.streams, args.deltas, args.gap_ms)
                print(f"  vs the naive design on this machine: x{ours / naive:.2f} "
                      f"(target x{1 / 3:.2f}: {'met' if ours <= naive / 3 else 'missed'})")
            await cancellation(llm, endpoint, args.cancel_trials, args.header_trials)
        finally:
            await llm.aclose()

    started = time.perf_counter()
    try:
        trio.run(run)
    finally:
        endpoint.stop()
    print(f"done in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
