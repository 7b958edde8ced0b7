"""``bench_latency.py``'s options (kept apart so that script stays a readable size)."""

from __future__ import annotations

import argparse
from pathlib import Path

from local_stack import MOTO, MOTO_SERVERS, TOKEN


def parser(description: str, shapes: tuple[str, ...], *, listen_wpm: float,
           window_s: float) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--levels", type=int, nargs="+", default=[50, 200, 500, 1000, 2000])
    parser.add_argument("--ramp-per-call", type=float, default=0.02,
                        help="seconds of ramp per call (default 0.02: 500 calls over 10 s)")
    parser.add_argument("--think", type=float, default=1.5,
                        help="seconds a caller takes to answer once the reply has been "
                             "heard out (default 1.5, varied +-50%%)")
    parser.add_argument("--listen-wpm", type=float, default=listen_wpm,
                        help="words a minute the caller hears the reply at before thinking "
                             "(default 150, TTS pace; 0: answer as soon as the text is in)")
    parser.add_argument("--window", type=float, default=window_s,
                        help="seconds every call is up at once after the ramp; the figures "
                             "come from that window (default 30)")
    parser.add_argument("--workers", type=int, default=1,
                        help="server processes sharing the port (REUSE_PORT), as the "
                             "container runs one per core (default 1)")
    parser.add_argument("--llm", choices=("bedrock", "scripted"), default="bedrock",
                        help="bedrock: the local ConverseStream endpoint, in its own process "
                             "(default); scripted: the offline model inside the server")
    parser.add_argument("--store", choices=("dynamodb", "sqlite"), default="dynamodb",
                        help="dynamodb: moto's server (default); sqlite: the embedded file")
    parser.add_argument("--moto", choices=MOTO_SERVERS, default=MOTO,
                        help="kept-alive: moto keeps connections alive, as DynamoDB does "
                             "(default); werkzeug: python -m moto.server, a connection per "
                             "request (BENCH_MOTO sets the default)")
    parser.add_argument("--first-token-ms", type=float, default=200.0,
                        help="the model's time to first token (default 200)")
    parser.add_argument("--token-ms", type=float, default=25.0,
                        help="between the model's tokens (default 25: 40 tokens/s)")
    parser.add_argument("--baseline", metavar="URL", default=None,
                        help="another ConversationRelay server, already running: loaded the "
                             "same way after ours at each level, ratios printed side by side")
    parser.add_argument("--baseline-pid", type=int, action="append", metavar="PID",
                        help="the baseline's local process(es), for its CPU per token")
    parser.add_argument("--baseline-auth-token", default=TOKEN,
                        help="the baseline's Twilio auth token (to sign as Twilio would)")
    parser.add_argument("--baseline-unchunked", action="store_true",
                        help="baseline: this server with TOKEN_HOLD_MS=0 (one frame per "
                             "token, as relays commonly send), on the same stack")
    parser.add_argument("--baseline-minimal", action="store_true",
                        help="baseline: benchmarks/minimal_server.py (history in memory, no "
                             "signatures, no store, no logs), on the same stack and core")
    parser.add_argument("--tls", action="store_true",
                        help="the local Bedrock endpoint speaks TLS (a private CA, trusted "
                             "through AWS_CA_BUNDLE), as the real one does")
    parser.add_argument("--shape", choices=("steady", *shapes), default="steady",
                        help="steady: every call up at once for --window, figures after the "
                             "ramp; gate: calls connect at 50/s, then each waits 0-8 s and "
                             "speaks 3 turns 4-12 s apart, every turn counted (issue 20; use "
                             "--first-token-ms 300 --token-ms 20); gate-barge: the second "
                             "turn barges in after 3 words; gate-fail: the relay session "
                             "fails after the second turn, and the call is reconnected")
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    parser.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting for our server (repeatable), to see what it costs: "
                             "e.g. LOG_LEVEL=WARNING")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="sample the server with py-spy (pip install "
                             "'voiceagent[profile]'; root or ptrace rights) through each "
                             "loaded phase; flame graphs to DIR")
    parser.add_argument("--repeat", type=int, default=1, metavar="R",
                        help="run each level R times on fresh stacks; goals are checked on "
                             "the median (one stall of this shared machine moves a p99)")
    parser.add_argument("--no-pin", dest="pin", action="store_false",
                        help="let every process run on every core (default: the server's "
                             "workers get a core each when one is left for the callers)")
    return parser
