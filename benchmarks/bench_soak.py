"""A day of calls leaves nothing behind: what one server process still holds after N calls.

A task serves thousands of calls between deploys; anything kept per call and not let go when
the call ends grows until the task is killed for memory. This starts the real server
(``voiceagent serve`` in its own process, on the local stack: ``STORE=dynamodb`` on moto and
``LLM=bedrock`` on the local ConverseStream endpoint, as production; ``--embedded`` for SQLite
and the scripted model instead) and plays N short calls, ``--concurrency`` at a time, each as
Twilio would: the signed ``/twiml``, the socket and ``setup``, a turn with a tool round, a
turn barged into after 3 words, the caller hanging up, and ``/action`` with
``SessionStatus=completed``. After every ``--every`` calls, with none up, it asks the server
(SIGUSR1, to the small wrapper below that runs it) for a full collection, its RSS, its gc
object counts by type and a tracemalloc snapshot, and prints what grew; at the end, the
growth per 1000 calls after the warm-up (the first report).

    python benchmarks/bench_soak.py --calls 4000              # ~6-8 min on 2 shared cores
    python benchmarks/bench_soak.py --calls 2000 --embedded
    python benchmarks/bench_soak.py --calls 3000 --trace-calls 0   # no tracing at all
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

TRACE_DEPTH = 10
METRICS_TOKEN = "bench-soak-metrics-not-secret"
DUMP_TIMEOUT_S = 120.0
CONNECTIONS_WAIT_S = 40.0     # twice PING_INTERVAL_S
CALL_TIMEOUT_S = 30.0
OURS = ("voiceagent/", "actors/")


# ------------------------------------------------------------------ in the server's process


def _serve_traced(dump_dir: Path) -> int:
    """``voiceagent serve``, with SIGUSR1 writing a report to ``dump_dir``: a Python-level
    handler runs on the main thread between bytecodes, so the event loop is stopped while it
    collects and counts (the benchmark asks only when no call is up). Tracing starts after a
    report when the file ``trace-now`` is in ``dump_dir``: it slows the server about ten
    times, so it covers the last stretch only, and only what is allocated after the
    baseline and still held can be growth."""
    reports = [0]

    def dump(signum: int, frame: object) -> None:
        reports[0] += 1
        n = reports[0]
        gc.collect()
        counts = Counter(_kind(o) for o in gc.get_objects())
        rss_kb = _rss_kb(os.getpid())
        if tracemalloc.is_tracing():
            tracemalloc.take_snapshot().dump(str(dump_dir / f"snap-{n}.pickle"))
        elif (dump_dir / "trace-now").exists():
            tracemalloc.start(TRACE_DEPTH)
            tracemalloc.take_snapshot().dump(str(dump_dir / f"snap-{n}.pickle"))
        part = dump_dir / f"report-{n}.json.part"
        part.write_text(json.dumps({"rss_kb": rss_kb, "gc": dict(counts),
                                    "traced": tracemalloc.get_traced_memory()[0]}))
        part.rename(dump_dir / f"report-{n}.json")

    signal.signal(signal.SIGUSR1, dump)
    from voiceagent.app.cli import main as run_command
    return run_command(["serve"])


def _kind(thing: object) -> str:
    """Its type; a coroutine's function and a trio task's name too (a task parked after its
    call is found so)."""
    code = getattr(thing, "cr_code", None)
    if code is not None:
        return f"coroutine {code.co_qualname}"
    kind = type(thing)
    if kind.__qualname__ == "Task" and kind.__module__.startswith("trio"):
        name = str(getattr(thing, "name", "?")).rsplit(".", 1)[-1]
        return f"trio task {name}"
    return kind.__qualname__


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# ------------------------------------------------------------------ Twilio's side


async def _one_call(base: str, token: str, index: int, barged: list[int]) -> None:
    import trio

    from voiceagent.app.caller import Identity, open_call, post_form
    identity = Identity(from_number=f"+1555{index % 10_000_000:07d}",
                        call_sid=f"CA{index:032x}")
    with trio.fail_after(CALL_TIMEOUT_S):
        async with open_call(base, auth_token=token, identity=identity) as call:
            await call.say("When will my pick up be ready?")
            await _until_last(call, ending=("minutes",))    # the tool round's reply
            await call.say("Tell me about the menu")
            while (frame := await call.receive()) is not None:   # barge in at its first words
                if frame.get("type") == "text" and frame.get("token"):
                    if not frame.get("last"):
                        await call.interrupt()
                        await _until_last(call)
                        barged[0] += 1
                    break
            else:
                raise RuntimeError("the server closed the socket mid-turn")
            session_id = call.session_id
            await call.hang_up()
        await post_form(base + "/action", {
            "CallSid": identity.call_sid, "AccountSid": identity.account_sid,
            "SessionId": session_id, "SessionStatus": "completed",
            "CallStatus": "completed", "SessionDuration": "3"}, token)


async def _until_last(call: Any, ending: tuple[str, ...] = ()) -> None:
    """Frames until a talk cycle closes (and, with ``ending``, one whose text had one of
    those words: a tool round may close a filler's cycle first)."""
    text = ""
    while (frame := await call.receive()) is not None:
        if frame.get("type") == "text":
            text += str(frame.get("token", ""))
            if frame.get("last"):
                if not ending or any(word in text for word in ending):
                    return
                text = ""
        elif frame.get("type") == "end":
            return
    raise RuntimeError("the server closed the socket mid-turn")


async def _calls(base: str, token: str, first: int, count: int, concurrency: int,
                 errors: Counter[str], barged: list[int]) -> None:
    import trio
    next_index = [first]

    async def worker() -> None:
        while next_index[0] < first + count:
            index = next_index[0]
            next_index[0] += 1
            try:
                await _one_call(base, token, index, barged)
            except Exception as err:      # counted; the soak goes on
                errors[f"{type(err).__name__}: {str(err)[:80]}"] += 1

    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)


# ------------------------------------------------------------------ reports


def _metrics(base: str) -> dict[str, float]:
    request = urllib.request.Request(base + "/metrics",
                                     headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
    return {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
            if line and not line.startswith("#")}


def _wait_quiet(base: str) -> tuple[int, int]:
    """Until no call is up and the write-behind is empty, then until every connection but
    this request's has closed (a relay socket's lingered until its ping task woke:
    PING_INTERVAL_S), or CONNECTIONS_WAIT_S: what is held then is kept. Returns the
    connections counted open besides this request's when the last call had ended, and
    after the wait."""
    deadline = time.monotonic() + DUMP_TIMEOUT_S
    while True:
        values = _metrics(base)
        if (values.get("voiceagent_active_calls") == 0
                and values.get("voiceagent_write_behind_pending") == 0):
            break
        if time.monotonic() > deadline:
            raise SystemExit("calls or writes still pending after "
                             f"{DUMP_TIMEOUT_S:g} s: {values.get('voiceagent_active_calls')} "
                             f"calls, {values.get('voiceagent_write_behind_pending')} writes")
        time.sleep(0.5)
    deadline = time.monotonic() + CONNECTIONS_WAIT_S
    at_end = others = int(values.get("voiceagent_open_connections", 1)) - 1
    while others > 0:
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
        values = _metrics(base)
        others = int(values.get("voiceagent_open_connections", 1)) - 1
    time.sleep(0.5)             # this request's connection ends
    return at_end, others


def _ask_report(process: subprocess.Popen[bytes], dump_dir: Path, n: int) -> dict[str, Any]:
    process.send_signal(signal.SIGUSR1)
    path = dump_dir / f"report-{n}.json"
    deadline = time.monotonic() + DUMP_TIMEOUT_S
    while not path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the server gave no report {n} (exit code {process.poll()})")
        time.sleep(0.2)
    report: dict[str, Any] = json.loads(path.read_text())
    snap = dump_dir / f"snap-{n}.pickle"
    report["snapshot"] = tracemalloc.Snapshot.load(str(snap)) if snap.exists() else None
    return report


def _site(frame: tracemalloc.Frame) -> str:
    name = frame.filename.split("site-packages/")[-1].removeprefix(str(ROOT) + "/")
    if name.startswith("/"):
        name = name.rsplit("/", 1)[-1]
    return f"{name}:{frame.lineno}"


def _ours(traceback: tracemalloc.Traceback) -> str:
    """The innermost frame of our code that led to the allocation, if any."""
    for frame in reversed(traceback):       # oldest first, so reversed: innermost first
        if any(part in frame.filename for part in OURS) and "bench_soak" not in frame.filename:
            return _site(frame)
    return "-"


def _traced_growth(old: tracemalloc.Snapshot, new: tracemalloc.Snapshot, calls: int,
                   top: int) -> list[str]:
    sizes: Counter[tuple[str, str]] = Counter()
    for snapshot, sign in ((new, 1), (old, -1)):
        for trace in snapshot.traces:
            frames = trace.traceback
            innermost = frames[-1] if len(frames) else None
            key = (_site(innermost) if innermost else "?", _ours(frames))
            sizes[key] += sign * trace.size
    lines = []
    for (site, ours), size in sorted(sizes.items(), key=lambda kv: -kv[1])[:top]:
        if size <= 0:
            break
        lines.append(f"    {size * 1000 / calls / 1024:9.1f} KiB/1000 calls  {site}"
                     f"   (ours: {ours})")
    return lines


def _gc_growth(old: dict[str, int], new: dict[str, int], calls: int, top: int) -> list[str]:
    grown = Counter({kind: new.get(kind, 0) - old.get(kind, 0) for kind in new})
    return [f"    {count * 1000 / calls:+9.1f} /1000 calls  {kind} (now {new[kind]})"
            for kind, count in grown.most_common(top) if count > 0]


def main() -> None:
    if sys.argv[1:2] == ["--traced-server"]:
        sys.exit(_serve_traced(Path(sys.argv[2])))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=4000)
    parser.add_argument("--every", type=int, default=500, help="calls between reports")
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--embedded", action="store_true",
                        help="SQLite and the scripted model instead of moto and Bedrock's")
    parser.add_argument("--trace-calls", type=int, default=500,
                        help="calls of the last stretch, traced by tracemalloc (0: none); "
                             "tracing slows the server ~10x")
    args = parser.parse_args()

    import local_stack
    import server_process
    import trio
    options = local_stack.StackOptions(
        llm="scripted" if args.embedded else "bedrock",
        store="sqlite" if args.embedded else "dynamodb", first_token_ms=20, token_ms=10)
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as scratch_name, \
            local_stack.local_stack(options, Path(scratch_name)) as stack:
        scratch = Path(scratch_name)
        port = server_process.free_port()
        env = {**os.environ, **stack.env, "HOST": "127.0.0.1", "PORT": str(port),
               "PYTHONPATH": str(ROOT), "LOG_FORMAT": "json", "MAX_CALLS": "1000",
               "TASK_PROTECTION": "off", "METRICS_EMF": "false",
               "METRICS_TOKEN": METRICS_TOKEN}
        with (scratch / "server.log").open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, __file__, "--traced-server", str(scratch)],
                env=env, stdout=subprocess.DEVNULL, stderr=log)
        base = f"http://127.0.0.1:{port}"
        try:
            server_process.wait_for(lambda: server_process.accepts(port), process, 60,
                                    "the server")
            print(f"{args.calls} calls, {args.concurrency} at a time; {options.describe()}; "
                  f"the last {args.trace_calls} traced by tracemalloc ({TRACE_DEPTH} frames)",
                  flush=True)
            errors: Counter[str] = Counter()
            barged = [0]                    # calls whose barge-in cut a reply short
            reports: list[tuple[int, dict[str, Any]]] = []
            done = 0
            started = time.monotonic()
            while done < args.calls:
                count = min(args.every, args.calls - done)
                trio.run(_calls, base, local_stack.TOKEN, done, count, args.concurrency,
                         errors, barged)
                done += count
                at_end, lingering = _wait_quiet(base)
                if args.trace_calls and done >= args.calls - args.trace_calls:
                    (scratch / "trace-now").touch()
                report = _ask_report(process, scratch, len(reports) + 1)
                reports.append((done, report))
                print(f"{done:6d} calls  {time.monotonic() - started:6.0f} s  "
                      f"RSS {report['rss_kb'] / 1024:7.1f} MiB  traced "
                      f"{report['traced'] / 2**20:6.1f} MiB  gc objects "
                      f"{sum(report['gc'].values()):8d}  barge-ins {barged[0]}  errors "
                      f"{sum(errors.values())}  connections open {at_end} as the calls "
                      f"ended, {lingering} {CONNECTIONS_WAIT_S:g} s later",
                      flush=True)
                if len(reports) >= 2:
                    (was, old), (now, new) = reports[-2], reports[-1]
                    for line in _gc_growth(old["gc"], new["gc"], now - was, 6):
                        print(line)
                    if old["snapshot"] is not None and new["snapshot"] is not None:
                        for line in _traced_growth(old["snapshot"], new["snapshot"],
                                                   now - was, 6):
                            print(line)
                    if len(reports) > 2:
                        old["snapshot"] = None      # the first and the newest are kept
            if errors:
                print("errors: " + "; ".join(f"{n} x {e}" for e, n in errors.most_common(5)))
            if len(reports) >= 2:
                (was, first), (now, last) = reports[0], reports[-1]
                calls = now - was
                print(f"\ngrowth per 1000 calls after the first {was} (warm-up), over "
                      f"{calls} calls:")
                per = 1000 / calls
                objects = sum(last["gc"].values()) - sum(first["gc"].values())
                print(f"  RSS {(last['rss_kb'] - first['rss_kb']) * per / 1024:+.2f} MiB; "
                      f"traced {(last['traced'] - first['traced']) * per / 1024:+.1f} KiB; "
                      f"gc objects {objects * per:+.0f}")
                print("  gc objects by type:")
                for line in _gc_growth(first["gc"], last["gc"], calls, args.top):
                    print(line)
                if first["snapshot"] is not None and last["snapshot"] is not None:
                    print("  traced memory by allocation site (and our frame that led there):")
                    for line in _traced_growth(first["snapshot"], last["snapshot"], calls,
                                               args.top):
                        print(line)
        except BaseException:
            tail = (scratch / "server.log").read_text(errors="replace").splitlines()[-15:]
            print("the server's log ends:\n  " + "\n  ".join(tail), file=sys.stderr)
            raise
        finally:
            server_process.stop(process)


if __name__ == "__main__":
    main()
