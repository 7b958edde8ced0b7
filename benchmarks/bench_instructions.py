"""What one relayed token and one turn cost the server in machine instructions, counted by
callgrind: exact, so neither the hour nor the other processes on the machine can move them,
and below Python's frames (the cyclic collector, json, hashing, the interpreter's dispatch),
which ``bench_token_calls.py`` cannot see.

The workload is ``bench_token_calls.py``'s (its harness, reused): one process, trio's virtual
clock, the real server, the local Bedrock endpoint and a WebSocket caller; one turn of
``--short`` words, then one of ``--long``. It runs under ``valgrind --tool=callgrind`` with
collection off; a trio instrument turns it on for each step of a server task (the bedrock
read watchdog included, the loop-lag sampler not: it runs per process on a timer, not per
call) and off after it, and each thread job a server task starts (``run_blocking``: the
store) turns it on in its worker thread while it runs. Python cannot issue callgrind's
client requests, so a 3-line C helper is built with ``cc`` against ``valgrind/callgrind.h``;
the ctypes calls' own instructions, measured once, are taken off each step and job. So the
endpoint, the caller and trio's run loop between steps are not counted; a collection the
collector starts in a server step is, one started in another task's step is not (the report
says how many ran where). Each turn is dumped apart and read from callgrind's own file: per
token = (long - short) / the tokens between, per turn = the short turn less its tokens'
share. The same for ``benchmarks/minimal_server.py`` (the floor), in a second callgrind
beside it. The child runs with ``PYTHONHASHSEED=0``, so two runs take the same paths.

``--store dynamodb``: our store is DynamoDB on moto (``instruction_store.py``), as
``bench_latency.py --shape gate`` runs it, so the write-behind's requests (our HTTP client,
SigV4) count; moto keeps connections alive, as DynamoDB does (``--moto werkzeug``: moto's own
server, which closes each one, so each write also pays a connect). ``--by-package``: ours a
third time, through a frame evaluator that charges each instruction to the package whose
Python code ran and gives the functions of ours their inclusive cost
(``instruction_attribution.py``).

    python benchmarks/bench_instructions.py --long 200 --short 50
    python benchmarks/bench_instructions.py --server voiceagent --store dynamodb --by-package
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import instruction_attribution  # noqa: E402
import instruction_store  # noqa: E402
import local_stack  # noqa: E402
from callgrind_files import Dump, parse_callgrind, read_dump  # noqa: E402

__all__ = ["Dump", "Needed", "build_marker", "parse_callgrind", "read_dump"]

MARKER_C = """
#include <valgrind/callgrind.h>
void marker_toggle(void) { CALLGRIND_TOGGLE_COLLECT; }
void marker_dump(const char *name) { CALLGRIND_DUMP_STATS_AT(name); }
int marker_on_valgrind(void) { return RUNNING_ON_VALGRIND; }
"""
SERVERS = ("voiceagent", "minimal")
ATTRIBUTED = "attributed"       # ours again, through instruction_attribution's evaluator
CALIBRATION = 2000            # toggle pairs with nothing between: the meter's own cost
GC = "gc_collect_main"
# the interpreter and what valgrind puts between its calls: every call passes through them
INTERPRETER = ("libpython", "python3", "???", "ld-linux", "vgpreload")


class Needed(SystemExit):
    """A tool the benchmark needs is missing: what to install."""


def build_marker(folder: Path) -> Path:
    """The helper that issues callgrind's client requests (Python cannot: they are a magic
    instruction sequence); outside valgrind its calls do nothing."""
    if shutil.which("valgrind") is None:
        raise Needed("bench_instructions.py counts instructions with valgrind's callgrind, "
                     "and valgrind is not on PATH: install it (apt-get install valgrind) "
                     "and run again")
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise Needed("bench_instructions.py needs a C compiler (cc) to build its 3-line "
                     "callgrind marker: install one (apt-get install gcc) and run again")
    source, library = folder / "marker.c", folder / "marker.so"
    source.write_text(MARKER_C)
    built = subprocess.run([compiler, "-O2", "-shared", "-fPIC", "-o", str(library),
                            str(source)], capture_output=True, text=True, timeout=60)
    if built.returncode != 0:
        raise Needed(f"building the callgrind marker failed ({compiler}):\n{built.stderr}"
                     "valgrind/callgrind.h comes with valgrind (on Debian: the valgrind "
                     "package); install it and run again")
    return library


# ---- in the child, under callgrind ------------------------------------------------------

def child(server: str, marker_path: str, sizes: list[int], attribution: str | None) -> int:
    import bench_token_calls
    import instruction_store
    import trio
    from bench_token_calls import Counts, measure

    instruction_store.use_dynamodb_in_child()
    names: dict[int, str] = {}
    if attribution:
        import instruction_attribution
        names = instruction_attribution.start(attribution)

    marker = ctypes.CDLL(marker_path)
    marker.marker_dump.argtypes = [ctypes.c_char_p]
    if not marker.marker_on_valgrind():
        raise SystemExit("the child runs under callgrind only (bench_instructions.py runs it)")
    bench_token_calls.MINIMAL = server == "minimal"
    steps: list[int] = []

    class Steps(trio.abc.Instrument):
        """Collection on for a server task's step, off after it."""

        def __init__(self, owner: Counts) -> None:
            self.owner, self.on, self.steps = owner, False, 0

        def before_task_step(self, task: trio.lowlevel.Task) -> None:
            if self.owner.role(task) == "server":
                self.steps += 1
                self.on = True
                marker.marker_toggle()

        def after_task_step(self, task: trio.lowlevel.Task) -> None:
            if self.on:
                marker.marker_toggle()
                self.on = False

    collections = Counter[str]()

    def collected(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and meters:
            where = "server" if meters[-1].instrument.on else "elsewhere"
            collections[f"generation {info['generation']} {where}"] += 1

    gc.callbacks.append(collected)
    meters: list[Meter] = []
    jobs: list[int] = []
    run_sync = trio.to_thread.run_sync

    async def counted_run_sync(fn: Callable[..., Any], *args: Any, **options: Any) -> Any:
        """A server task's thread job (``run_blocking``: the store's writes) counted in its
        worker thread, whose collection callgrind keeps apart from the trio thread's."""
        if not meters or meters[-1].role(trio.lowlevel.current_task()) != "server":
            return await run_sync(fn, *args, **options)
        meters[-1].jobs += 1

        def job(*given: Any) -> Any:
            marker.marker_toggle()
            try:
                return fn(*given)
            finally:
                marker.marker_toggle()
        return await run_sync(job, *args, **options)

    trio.to_thread.run_sync = counted_run_sync

    class Meter(Counts):
        """The turn's bracket: the instrument in, then out."""

        def start(self) -> None:
            self.instrument, self.jobs = Steps(self), 0
            trio.lowlevel.add_instrument(self.instrument)
            meters.append(self)

        def stop(self) -> None:
            trio.lowlevel.remove_instrument(self.instrument)
            meters.remove(self)
            steps.append(self.instrument.steps)
            jobs.append(self.jobs)

    tokens = []
    for words in sizes:
        started = time.monotonic()
        _, relayed, _ = measure(words, Meter)
        marker.marker_dump(f"turn of {words} words".encode())
        tokens.append(relayed)
        print(f"  {server}: a turn of {words} words counted in "
              f"{time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    for _ in range(CALIBRATION):
        marker.marker_toggle()
        marker.marker_toggle()
    marker.marker_dump(b"calibration")
    print(json.dumps({"tokens": tokens, "steps": steps, "jobs": jobs,
                      "collections": collections, "names": names}), flush=True)
    return 0


# ---- in the parent ----------------------------------------------------------------------

@dataclass
class Run:
    server: str
    tokens: list[int]
    steps: list[int]
    jobs: list[int]
    dumps: list[Dump]
    collections: dict[str, int]
    names: dict[int, str]           # the attributed run's slots: functions of ours

    def pair_cost(self) -> float:
        """Instructions one on/off toggle pair counts of itself (ctypes in and out)."""
        return self.dumps[-1].total / CALIBRATION

    def split(self, short: float, long: float) -> tuple[float, float]:
        """(per token, per turn tokens aside) of a cost measured in both turns."""
        token = (long - short) / (self.tokens[1] - self.tokens[0])
        return token, short - token * self.tokens[0]

    def net(self, turn: int) -> float:
        return self.dumps[turn].total - (self.steps[turn] + self.jobs[turn]) * self.pair_cost()


def _interpreter() -> str:
    """The running Python's binary: valgrind must start the ELF file, not a pyenv shim (a
    shell script), and through the venv's own link so that the venv's packages are found."""
    with open(sys.executable, "rb") as program:
        if program.read(4) == b"\x7fELF":
            return sys.executable
    return os.path.realpath(sys.executable)


def run_child(server: str, marker: Path, sizes: list[int], folder: Path,
              extra_env: dict[str, str]) -> subprocess.Popen[str]:
    python = _interpreter()
    env = dict(os.environ, PYTHONHASHSEED="0", PYTHONPATH=str(ROOT))
    if server != "minimal":                 # the minimal server keeps no store
        env.update(extra_env)
    attribution = []
    if server == ATTRIBUTED:
        attribution = ["--attribution", str(instruction_attribution.build(folder, "cc"))]
    out = folder / f"{server}.out"
    command = ["valgrind", "--tool=callgrind", "--collect-atstart=no",
               f"--callgrind-out-file={out}", "--log-file=" + str(folder / f"{server}.log"),
               python, str(Path(__file__).resolve()), "--child", server,
               "--marker", str(marker), "--short", str(sizes[0]), "--long", str(sizes[1]),
               *attribution]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True, cwd=ROOT)


def finish(server: str, process: subprocess.Popen[str], folder: Path) -> Run:
    stdout, _ = process.communicate()
    if process.returncode != 0:
        log = (folder / f"{server}.log").read_text(errors="replace")[-2000:]
        raise SystemExit(f"the {server} run failed (exit {process.returncode}):\n{log}")
    result = json.loads(stdout.strip().splitlines()[-1])
    (folder / f"{server}.json").write_text(json.dumps(result))    # for --keep
    dumps = [read_dump(folder / f"{server}.out.{n}") for n in (1, 2, 3)]
    return Run(server, result["tokens"], result["steps"], result["jobs"], dumps,
               result["collections"], {int(k): v for k, v in result["names"].items()})


def report(runs: list[Run], top: int, functions: int) -> None:
    print(f"\n{'instructions':<44}{'per token':>14}{'per turn':>14}")
    figures: dict[str, tuple[float, float]] = {}
    for run in runs:
        token, turn = run.split(run.net(0), run.net(1))
        figures[run.server] = (token, turn)
        collector = next((k for k in run.dumps[0].own | run.dumps[1].own if k[0] == GC),
                         (GC, "?"))
        gc_token, gc_turn = run.split(*(dump.inclusive(collector) for dump in run.dumps[:2]))
        print(f"{run.server + ' server':<44}{token:>14,.0f}{turn:>14,.0f}")
        print(f"{'  in the cyclic collector (' + GC + ')':<44}{gc_token:>14,.0f}"
              f"{gc_turn:>14,.0f}   {gc_turn / turn:.1%} of a turn, "
              f"{gc_token / token:.1%} of a token")
        print(f"  (the turns: {run.net(0):,.0f} and {run.net(1):,.0f} instructions, "
              f"{run.tokens[0]} and {run.tokens[1]} tokens, {run.steps[0]} and "
              f"{run.steps[1]} server steps, {run.jobs[0]} and {run.jobs[1]} thread jobs, "
              f"each less the meter's own {run.pair_cost():,.0f})")
        started = ", ".join(f"{n} of {k}" for k, n in sorted(run.collections.items()))
        print(f"  (collections started in the two turns: {started or 'none'})")
    if "voiceagent" in figures and "minimal" in figures:
        (ours_token, ours_turn), (floor_token, floor_turn) = (figures[s] for s in SERVERS)
        print(f"{'ours / minimal':<44}{ours_token / floor_token:>14.2f}"
              f"{ours_turn / floor_turn:>14.2f}")
    for run in runs:
        if run.server == ATTRIBUTED:
            instruction_attribution.report(run.dumps[:2], run.split, run.names, functions,
                                           [(run.steps[n] + run.jobs[n]) * run.pair_cost()
                                            for n in (0, 1)], figures.get("voiceagent"))
            continue
        print(f"\n{run.server}: by object, per token and per turn: the calls into it from "
              "another object (inclusive), its own instructions (the meter's ctypes and "
              "libffi calls in these, not taken off)")
        entered = [dump.entered() for dump in run.dumps[:2]]
        owned = [Counter[str]() for _ in range(2)]
        for counter, dump in zip(owned, run.dumps[:2], strict=True):
            for (_, obj), cost in dump.own.items():
                counter[obj] += cost
        objects = sorted(set(owned[0]) | set(owned[1]), key=lambda o: -owned[0][o])[:top]
        for obj in objects:
            own = run.split(owned[0][obj], owned[1][obj])
            if obj.startswith(INTERPRETER):     # where everything starts and returns to
                into = f"{'-':>10}{'-':>12}"
            else:
                token, turn = run.split(entered[0][obj], entered[1][obj])
                into = f"{token:>10,.0f}{turn:>12,.0f}"
            print(f"  {into}{own[0]:>10,.0f}{own[1]:>12,.0f}  {obj}")


def main() -> int:
    parser = argparse.ArgumentParser(description="What one relayed token and one turn cost "
                                     "the server in machine instructions (callgrind), ours "
                                     "and the minimal server's.")
    parser.add_argument("--long", type=int, default=200, help="words in the long reply")
    parser.add_argument("--short", type=int, default=50, help="words in the short reply")
    parser.add_argument("--server", choices=("both", *SERVERS), default="both",
                        help="count ours, the minimal server, or both side by side (default)")
    parser.add_argument("--minimal", action="store_const", const="minimal", dest="server",
                        help="count only benchmarks/minimal_server.py")
    parser.add_argument("--top", type=int, default=8, help="objects listed (default 8)")
    parser.add_argument("--store", choices=("sqlite", "dynamodb"), default="sqlite",
                        help="our store: a SQLite file (default) or DynamoDB on moto's "
                        "server, as bench_latency.py --shape gate runs it")
    parser.add_argument("--moto", choices=local_stack.MOTO_SERVERS, default=local_stack.MOTO,
                        help="--store dynamodb: moto with kept-alive connections, as "
                        "DynamoDB (default), or moto's werkzeug server, a connection per "
                        "request (BENCH_MOTO sets the default)")
    parser.add_argument("--by-package", action="store_true",
                        help="also count ours through a frame evaluator that charges each "
                        "instruction to the package whose Python code runs (and a slot per "
                        "function of ours): by package, and --functions of ours inclusive")
    parser.add_argument("--functions", type=int, default=15,
                        help="functions of ours listed with --by-package (default 15)")
    parser.add_argument("--keep", metavar="DIR", help="keep callgrind's files in DIR")
    parser.add_argument("--child", choices=(*SERVERS, ATTRIBUTED), help=argparse.SUPPRESS)
    parser.add_argument("--marker", help=argparse.SUPPRESS)
    parser.add_argument("--attribution", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.long <= args.short:
        raise SystemExit(f"--long ({args.long}) must be more than --short ({args.short})")
    sizes = [args.short, args.long]
    if args.child:
        return child(args.child, args.marker, sizes, args.attribution)
    servers: tuple[str, ...] = SERVERS if args.server == "both" else (args.server,)
    if args.by_package:
        servers = (*servers, ATTRIBUTED)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-instructions-") as scratch:
        folder = Path(args.keep or scratch)
        folder.mkdir(parents=True, exist_ok=True)
        marker = build_marker(folder)
        on_moto = f" on {args.moto} moto" if args.store == "dynamodb" else ""
        print(f"counting turns of {args.short} and {args.long} words in callgrind "
              f"({', '.join(servers)}, side by side; ~50x slower than Python alone; our "
              f"store: {args.store}{on_moto})", flush=True)
        stores = ExitStack()
        extra_env = (stores.enter_context(instruction_store.dynamodb(
                         folder, kept_alive=args.moto == "kept-alive"))
                     if args.store == "dynamodb" else {})
        processes = {s: run_child(s, marker, sizes, folder, extra_env) for s in servers}
        ticker = threading.Event()

        def tick() -> None:
            while not ticker.wait(30):
                print(f"  ... {time.monotonic() - started:.0f} s", flush=True)
        threading.Thread(target=tick, daemon=True).start()
        try:
            runs = [finish(s, p, folder) for s, p in processes.items()]
        finally:
            ticker.set()
            for process in processes.values():
                if process.poll() is None:
                    process.kill()
            stores.close()
        report(runs, args.top, args.functions)
    print(f"\ndone in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
