"""The ``voiceagent bench`` command line: its flags, and the run it starts (see ``bench``)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import trio

from voiceagent.app import bench as bench_module
from voiceagent.app.bench import DEFAULT_SCRIPT, FAIL_STEP, BenchOptions, Step, run_bench
from voiceagent.app.bench_report import format_table
from voiceagent.app.caller import CallerError


def add_command(commands: Any) -> None:
    """Register ``voiceagent bench`` on the CLI's subparsers."""
    bench = commands.add_parser(
        "bench", help="load-test any ConversationRelay server, playing Twilio",
        description=bench_module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_argument("url", help="the server's base URL, e.g. http://127.0.0.1:3000")
    bench.add_argument("-n", "--calls", type=int, default=10, help="calls in all (default 10)")
    bench.add_argument("-r", "--ramp", type=float, default=1.0, dest="ramp_s",
                       help="seconds over which calls start (default 1)")
    bench.add_argument("--say", dest="script", action="append", metavar="TEXT",
                       type=lambda text: Step("say", text), help="a turn (repeatable, in order)")
    bench.add_argument("--barge", dest="script", action="append", metavar="K:TEXT",
                       type=Step.parse_barge, help="a turn interrupted after K tokens")
    bench.add_argument("--dtmf", dest="script", action="append", metavar="DIGIT",
                       type=lambda digit: Step("dtmf", digit), help="a key press turn")
    bench.add_argument("--fail", dest="script", action="append_const", const=FAIL_STEP,
                       help="the relay session fails here: the socket closes with 1011, "
                            "/action is asked (SessionStatus=failed) and the call goes on "
                            "over the socket it answers with")
    bench.add_argument("--think", type=float, default=0.0, dest="think_s",
                       help="seconds between turns")
    bench.add_argument("--think-jitter", type=float, default=0.0, metavar="J",
                       help="vary each pause by up to +-J of --think (0-1; real callers are "
                            "not in step)")
    bench.add_argument("--hold", type=float, default=0.0, dest="hold_s",
                       help="seconds to stay connected, idle, after the script")
    bench.add_argument("--listen-wpm", type=float, default=0.0, metavar="W",
                       help="before each pause, hear the reply out as if spoken at W words "
                            "a minute (Twilio's TTS speaks about 150): a caller's real pace")
    bench.add_argument("--duration", type=float, default=0.0, dest="until_s", metavar="S",
                       help="every call repeats its script until S seconds after the start, "
                            "so all of them are up at once; figures then count the turns "
                            "after the ramp only (all calls connected)")
    bench.add_argument("--gate", action="store_true",
                       help="no call speaks until every call is connected (the burst of "
                            "first turns right after a ramp)")
    bench.add_argument("--spread", type=float, default=0.0, dest="spread_s", metavar="S",
                       help="each call waits uniform(0, S) seconds before its first turn")
    bench.add_argument("--auth-token", default=os.environ.get("TWILIO_AUTH_TOKEN"),
                       help="sign requests as Twilio would (default: $TWILIO_AUTH_TOKEN)")
    bench.add_argument("--server-pid", type=int, action="append", metavar="PID",
                       help="a local server process: report its CPU and RSS from /proc "
                            "(repeat for each worker; figures are summed)")
    bench.add_argument("--json", type=Path, default=Path("bench-results.json"),
                       dest="json_path",
                       help="where to write the figures (default bench-results.json)")
    bench.add_argument("-q", "--quiet", action="store_true", help="no progress line")
    bench.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    if args.calls < 1:
        raise CallerError("--calls must be at least 1")
    if args.until_s and args.until_s <= args.ramp_s:
        raise CallerError(f"--duration {args.until_s:g} must be longer than the ramp "
                          f"({args.ramp_s:g} s), or no call is measured")
    options = BenchOptions(
        url=args.url, calls=args.calls, ramp_s=max(0.0, args.ramp_s),
        script=tuple(args.script or DEFAULT_SCRIPT), auth_token=args.auth_token,
        server_pids=tuple(args.server_pid or ()), hold_s=args.hold_s, think_s=args.think_s,
        think_jitter=min(1.0, max(0.0, args.think_jitter)), listen_wpm=args.listen_wpm,
        until_s=args.until_s, measure_from_s=args.ramp_s if args.until_s else 0.0,
        json_path=args.json_path, progress=not args.quiet, gate=args.gate,
        spread_s=max(0.0, args.spread_s))
    result = trio.run(run_bench, options)
    print(format_table(result))
    print(f"figures written to {args.json_path}", file=sys.stderr)
    return 1 if result["errors"] else 0
