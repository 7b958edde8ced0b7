"""Healthy calls beside hostile ones: do the healthy calls keep their latency?

Starts ``voiceagent serve`` in its own process (scripted model, SQLite, signatures on), then
runs the same healthy workload twice: alone, and next to attackers (``--attacks``, all by
default):

* ``frames``: calls that flood the server with binary frames, broken JSON, oversized frames,
  wrong field types and bursts of prompts;
* ``posts``: unsigned 16 MB POSTs to /twiml and /action, and ones with a made-up signature
  header, each sent as fast as the server takes it;
* ``bodies``: the webhook bodies within the size and field caps that cost the server the most
  to decode before it can check their (made-up, well-formed) signature, over kept-alive
  connections to /twiml and /action, as fast as the server answers (``worst_bodies``);
* ``idle``: validly signed relay sockets (a captured handshake) that never send setup,
  opened again as soon as they are closed;
* ``dtmf``: calls that press keys as fast as they can;
* ``replay``: a live healthy call's signed /twiml sent again, and setups for CallSids nobody
  prepared with made-up tokens.

Prints application latency (prompt sent -> first token received, minus the scripted model's
first-token delay) for both runs and the ratio, and what each attacker achieved.
Everything stays on 127.0.0.1.

    python benchmarks/bench_hostile.py --healthy 20 --hostile 20 --turns 5
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import h11
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import server_process
from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

from voiceagent.app.caller import CallerError, Identity, open_call, post_form, release_transport
from voiceagent.app.web import MAX_FIELDS, MAX_WEBHOOK_BYTES
from voiceagent.signature import sign

TOKEN = "bench-token"
ATTACKS = ("frames", "posts", "bodies", "idle", "dtmf", "replay")
POST_BYTES = 16 * 1024 * 1024
# a signature's shape (base64 of an HMAC-SHA1), not a signature: the body is decoded first
MADE_UP_SIGNATURE = base64.b64encode(hashlib.sha1(b"made up").digest()).decode()
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
                       errors: list[str], live: list[Identity]) -> None:
    caller = Identity(from_number="+15555550199")
    with trio.move_on_after(CALL_LIMIT_S) as limit:
        async with open_call(url, auth_token=TOKEN, identity=caller) as call:
            live.append(caller)
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


async def big_post(url: str, stop: trio.Event, tally: Counter[str]) -> None:
    """16 MB bodies, unsigned or with a made-up signature, as fast as the server reads."""
    host, port = url.removeprefix("http://").split(":")
    n = 0
    while not stop.is_set():
        path = ("/twiml", "/action")[n % 2]
        fake_signature = ["X-Twilio-Signature: bm90LWEtc2lnbmF0dXJl"] if n % 4 >= 2 else []
        head = "\r\n".join([f"POST {path} HTTP/1.1", f"Host: {host}:{port}",
                             "Content-Type: application/x-www-form-urlencoded",
                             f"Content-Length: {POST_BYTES}", *fake_signature])
        n += 1
        with trio.move_on_after(5):
            async with await trio.open_tcp_stream(host, int(port)) as stream:
                await stream.send_all(head.encode() + b"\r\n\r\n")
                async with trio.open_nursery() as nursery:
                    async def body() -> None:
                        chunk = b"CallSid=" + b"A" * (1024 * 1024 - 8)
                        with contextlib.suppress(trio.BrokenResourceError):
                            for _ in range(POST_BYTES // len(chunk)):
                                await stream.send_all(chunk)
                                tally["post MB sent"] += 1
                    nursery.start_soon(body)
                    with contextlib.suppress(trio.BrokenResourceError):
                        answer = await stream.receive_some(4096)
                        tally[f"post answered {answer[9:12].decode() or 'closed'}"] += 1
                    nursery.cancel_scope.cancel()


def worst_bodies() -> dict[str, tuple[bytes, int]]:
    """The costliest bodies the webhooks decode (``webhook_form``) and sign-check before they
    can refuse them, each at the size and field caps, with the status it must get. Measured
    in-process (timeit, decode and check) beside a dozen other shapes: a literal '=' is the
    decoder's costliest byte (rewritten as '=3D' for ``binascii.a2b_qp`` in a field holding
    an escape), the most fields of escapes come next, their keys sorted backwards or one key
    repeated. A bad escape at the end is refused (400) before the check, cheaper than any of
    these (as is a body that is not UTF-8): it is sent for that path."""
    def spread(field: Callable[[int, int], bytes]) -> bytes:
        size = (MAX_WEBHOOK_BYTES - (MAX_FIELDS - 1)) // MAX_FIELDS     # an '&' between two
        return b"&".join(field(i, size) for i in range(MAX_FIELDS))

    def fill(unit: bytes, tail: bytes = b"") -> bytes:
        return b"k=" + unit * ((MAX_WEBHOOK_BYTES - 2 - len(tail)) // len(unit)) + tail

    emoji = b"%F0%9F%98%80"
    bodies = {
        "literal '=' in every field": (spread(lambda i, n: b"k=%41" + b"=" * (n - 5)), 403),
        "long escaped keys, sorted backwards": (
            spread(lambda i, n: emoji * ((n - 6) // 12) + b"%04d=x" % (MAX_FIELDS - i)), 403),
        "one key repeated, escaped values": (
            spread(lambda i, n: b"k=" + emoji * ((n - 6) // 12) + b"%04d" % i), 403),
        "every byte escaped, in every field": (spread(lambda i, n: b"".join(
            b"%%%02X" % c for c in b"k%03d" % i) + b"=" + b"%C3%A9" * ((n - 13) // 6)), 403),
        "a bad escape at the end": (fill(b"%C3%A9", tail=b"%zz"), 400),
    }
    for name, (body, _) in bodies.items():
        if len(body) > MAX_WEBHOOK_BYTES or body.count(b"&") >= MAX_FIELDS:
            raise ValueError(f"body {name!r} is past the caps: the server would not decode it")
    return bodies


async def hostile_bodies(url: str, stop: trio.Event, tally: Counter[str], first: int) -> None:
    """The worst bodies in turn with a made-up signature, each answered before the next is
    sent, over one connection kept alive (dialled again when the server closes it)."""
    host, port = url.removeprefix("http://").split(":")
    bodies = list(worst_bodies().items())
    n = first
    while not stop.is_set():
        async with await trio.open_tcp_stream(host, int(port)) as stream:
            client = h11.Connection(h11.CLIENT)
            while not stop.is_set():
                name, (body, expected) = bodies[n % len(bodies)]
                path = ("/twiml", "/action")[n // len(bodies) % 2]
                n += 1
                headers = [("Host", f"{host}:{port}"), ("Content-Length", str(len(body))),
                           ("Content-Type", "application/x-www-form-urlencoded"),
                           ("X-Twilio-Signature", MADE_UP_SIGNATURE)]
                status = await _exchange(stream, client, h11.Request(
                    method="POST", target=path, headers=headers), body)
                if status is None:
                    tally["bodies: no answer (connection closed, or over 5 s)"] += 1
                    break
                verdict = "as expected" if status == expected else f"expected {expected}: a finding"
                tally[f"bodies: {name} answered {status} ({verdict})"] += 1
                try:
                    client.start_next_cycle()
                except h11.LocalProtocolError:      # the server closes this one: dial again
                    break


async def _exchange(stream: trio.SocketStream, client: h11.Connection, head: h11.Request,
                    body: bytes) -> int | None:
    """One request and its answer's status (its body read and dropped), or None when the
    server closed the connection first or took more than 5 s."""
    status = None
    with trio.move_on_after(5), contextlib.suppress(trio.BrokenResourceError):
        await stream.send_all(client.send(head) + client.send(h11.Data(data=body))
                              + client.send(h11.EndOfMessage()))
        while True:
            event = client.next_event()
            if event is h11.NEED_DATA:
                client.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                return status if isinstance(event, h11.EndOfMessage) else None
    return None


async def idle_socket(url: str, stop: trio.Event, tally: Counter[str]) -> None:
    """A captured signed upgrade: connect, say nothing, reconnect when closed."""
    ws_url = url.replace("http://", "ws://") + "/relay"
    headers = [(b"X-Twilio-Signature", sign(TOKEN, ws_url).encode())]
    while not stop.is_set():
        try:
            async with open_websocket_url(ws_url, extra_headers=headers) as ws:
                tally["idle sockets opened"] += 1
                with contextlib.suppress(ConnectionClosed):
                    await ws.get_message()
                tally["idle sockets closed by the server"] += 1
                await release_transport(ws)
        except HandshakeError:
            tally["idle sockets refused"] += 1
            await trio.sleep(0.05)


async def dtmf_flood(url: str, stop: trio.Event, tally: Counter[str]) -> None:
    while not stop.is_set():
        async with open_call(url, auth_token=TOKEN) as call, trio.open_nursery() as nursery:
            async def drain() -> None:
                while (frame := await call.receive()) is not None:
                    tally["dtmf replies (text frames)"] += frame.get("type") == "text"
                nursery.cancel_scope.cancel()
            nursery.start_soon(drain)
            with contextlib.suppress(ConnectionClosed):
                while not stop.is_set():
                    await call.dtmf("1234567890*#"[tally["keys pressed"] % 12])
                    tally["keys pressed"] += 1
                    await trio.lowlevel.checkpoint()
                await call.hang_up()
            nursery.cancel_scope.cancel()


async def replay(url: str, stop: trio.Event, tally: Counter[str], live: list[Identity]
                 ) -> None:
    ws_url = url.replace("http://", "ws://") + "/relay"
    headers = [(b"X-Twilio-Signature", sign(TOKEN, ws_url).encode())]
    while not stop.is_set():
        if live:
            victim = live[tally["replays"] % len(live)]
            form = {"CallSid": victim.call_sid, "AccountSid": victim.account_sid,
                    "From": victim.from_number, "To": victim.to_number,
                    "CallStatus": "ringing", "Direction": "inbound",
                    "ApiVersion": "2010-04-01"}
            try:
                await post_form(url + "/twiml", form, TOKEN)
                tally["replayed /twiml answered 200"] += 1
            except CallerError as err:
                tally[f"replayed /twiml refused {str(err).split('HTTP ')[1][:3]}"] += 1
            tally["replays"] += 1
        async with open_websocket_url(ws_url, extra_headers=headers) as ws:
            await ws.send_message(json.dumps({
                "type": "setup", "sessionId": "VX1", "callSid": Identity().call_sid,
                "from": "+15555550100", "to": "+15555550199",
                "customParameters": {"sessionToken": "anything"}}))
            try:
                await ws.get_message()
                tally["forged setups served"] += 1
            except ConnectionClosed as closed:
                tally[f"forged setups closed {closed.reason.code}"] += 1
                await release_transport(ws)
        await trio.sleep(0.01)


async def run_phase(url: str, healthy: int, hostile: int, turns: int,
                    attacks: tuple[str, ...]) -> tuple[list[float], Counter[str]]:
    latencies: list[float] = []
    errors: list[str] = []
    sent, closed = [0], [0]
    tally: Counter[str] = Counter()
    live: list[Identity] = []
    stop = trio.Event()
    async with trio.open_nursery() as outer:
        for n in range(hostile):
            attack = attacks[n % len(attacks)]
            if attack == "frames":
                outer.start_soon(hostile_call, url, stop, sent, closed)
            elif attack == "posts":
                outer.start_soon(big_post, url, stop, tally)
            elif attack == "bodies":
                outer.start_soon(hostile_bodies, url, stop, tally, n)
            elif attack == "idle":
                outer.start_soon(idle_socket, url, stop, tally)
            elif attack == "dtmf":
                outer.start_soon(dtmf_flood, url, stop, tally)
            else:
                outer.start_soon(replay, url, stop, tally, live)
        if hostile:
            await trio.sleep(1.0)                           # let the flood build up
        async with trio.open_nursery() as nursery:
            for _ in range(healthy):
                nursery.start_soon(healthy_call, url, turns, latencies, errors, live)
        stop.set()
        outer.cancel_scope.deadline = trio.current_time() + 10
    if errors:
        print(f"errors: {len(errors)}, first: {errors[0]}", file=sys.stderr)
    tally["junk frames sent"] = sent[0]
    tally["junk sockets closed by the server"] = closed[0]
    tally["healthy errors"] = len(errors)
    return latencies, tally


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--healthy", type=int, default=20)
    parser.add_argument("--hostile", type=int, default=20)
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--attacks", nargs="+", choices=ATTACKS, default=list(ATTACKS),
                        help="what the hostile callers do, shared out among them")
    args = parser.parse_args()
    data = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-hostile-{os.getpid()}"
    process, url = start_server(data)
    try:
        attacks = tuple(args.attacks)
        alone, _ = trio.run(run_phase, url, args.healthy, 0, args.turns, attacks)
        beside, tally = trio.run(run_phase, url, args.healthy, args.hostile, args.turns,
                                 attacks)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    print(f"machine: {os.cpu_count()} cpus, {platform.processor() or platform.machine()}, "
          f"python {platform.python_version()}")
    print(f"healthy calls {args.healthy} x {args.turns} turns; {args.hostile} attackers "
          f"({', '.join(attacks)}) during the second run:")
    for name, count in sorted(tally.items()):
        print(f"  {name}: {count}")
    print(f"{'application latency overhead (ms)':36} {'p50':>8} {'p95':>8} {'p99':>8}")
    for label, values in (("healthy alone", alone), ("healthy beside hostile", beside)):
        print(f"{label:36} {pct(values, .5):8.2f} {pct(values, .95):8.2f} "
              f"{pct(values, .99):8.2f}")
    ratio = pct(beside, .99) / max(pct(alone, .99), 0.01)
    print(f"p99 ratio beside/alone: {ratio:.2f}  (mean {statistics.mean(beside):.2f} ms vs "
          f"{statistics.mean(alone):.2f} ms)")
    print(json.dumps({"alone_p99_ms": pct(alone, .99), "beside_p99_ms": pct(beside, .99),
                      "ratio_p99": ratio, "attackers": dict(tally)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
