"""The ``voiceagent`` command: serve, demo, call.

Every subcommand returns an exit code; a domain error prints one clear line (no traceback)
and returns non-zero.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from functools import partial
from importlib import metadata
from pathlib import Path

import trio

from voiceagent import logs, signature
from voiceagent.app import bench_cli, check, init, unset_public_url
from voiceagent.app.caller import CallerError, Identity, open_call
from voiceagent.app.cli_store import add_commands
from voiceagent.app.terminal import (
    LANGUAGE_TAG,
    Transcript,
    interactive,
    piped_lines,
    scripted,
)
from voiceagent.errors import ConfigError, ListenError, SettingsError, StoreError
from voiceagent.settings import LOCAL_CONFIG, Settings, packaged_config_dir
from voiceagent.usecases import E164

log = logging.getLogger(__name__)

DESCRIPTION = """\
Phone agents on Twilio ConversationRelay and Amazon Bedrock.

Start here: `voiceagent demo` talks to the restaurant agent offline (`--web`: in your
browser); `voiceagent init DIR` starts an agent of your own; `voiceagent check` says what is
missing for a real call; `voiceagent serve` runs the service."""
EPILOG = """\
Settings come from environment variables and a .env file in the current folder (the
environment wins); .env.example lists every one. `voiceagent COMMAND --help` for a command."""

# printed as one line with exit code 2; anything else is a bug and keeps its traceback
DOMAIN_ERRORS = (SettingsError, ConfigError, CallerError, StoreError, ListenError)
DEMO_WARNING = ("DEMO MODE: Twilio signature checks are OFF, the model is the offline "
                "scripted one and state is in a local SQLite file. Never expose this server.")

NOT_YOUR_AGENT = ("demo runs voiceagent's example restaurant agent, not this folder's "
                  "config/usecases/. For yours: `voiceagent serve` here, then `voiceagent "
                  "call` in a second terminal, or PHONE_PAGE=true for the browser phone "
                  "(docs/build-your-own-agent.md, docs/phone.md).")


def main(argv: Sequence[str] | None = None) -> int:
    if isinstance(sys.stdout, io.TextIOWrapper):
        # a terminal or file that is not UTF-8 (cp1252, Latin-1): '\xe9' for what it cannot
        # show, as Python does on stderr, rather than dying at a caller's 'café'
        sys.stdout.reconfigure(errors="backslashreplace")
    try:
        code = _main(argv)
        sys.stdout.flush()          # here, not at exit, where a closed pipe prints a traceback
    except (BrokenPipeError, BaseExceptionGroup) as err:
        # printed inside trio's nurseries (demo, call), it comes wrapped in a group
        if isinstance(err, BaseExceptionGroup) and err.split(BrokenPipeError)[1] is not None:
            raise
        # `voiceagent calls list | head -1`: the reader left, as a Unix tool's would
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + 13             # as if killed by SIGPIPE, which Python ignores
    return code


def _main(argv: Sequence[str] | None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        return int(args.run(args))
    except DOMAIN_ERRORS as err:
        print(f"voiceagent: {err}", file=sys.stderr)
        return 2
    except BaseExceptionGroup as group:          # errors from inside a nursery arrive grouped
        if group.split(KeyboardInterrupt)[1] is None:    # Ctrl-C during a call
            return 130
        known, rest = group.split(DOMAIN_ERRORS)
        if known is None or rest is not None:
            raise
        for leaf in _leaves(known):
            print(f"voiceagent: {leaf}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for err in group.exceptions:
        out.extend(_leaves(err) if isinstance(err, BaseExceptionGroup) else [err])
    return out


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="voiceagent", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"voiceagent {_version()}",
                        help="print the installed version and exit")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    serve = commands.add_parser(
        "serve", help="run the service (settings from the environment and .env)",
        description="Serve Twilio's webhooks and ConversationRelay sockets on HOST:PORT until "
                    "SIGTERM or Ctrl-C, then drain live calls. Every setting comes from the "
                    "environment (see .env.example); all problems are reported at once.")
    serve.add_argument("--env-file", type=Path, default=None, metavar="PATH",
                       help="read settings from this file (default: ./.env when it exists); "
                            "variables already in the environment win")
    serve.set_defaults(run=_serve)

    demo = commands.add_parser(
        "demo", help="run offline and talk to the restaurant agent",
        description="Serve the example agents on 127.0.0.1 with the offline scripted model and "
                    "an embedded store, and be the caller: type what you say, /interrupt to "
                    "barge in, /dtmf 12 to press keys, /lang es to speak another language, "
                    "/hangup to end, /help. Without a "
                    "terminal, lines piped in (or --say) are the caller's. Signature checks "
                    "are off: for your machine only.")
    demo.add_argument("--say", action="append", default=[], metavar="TEXT",
                      help="play a scripted caller instead of typing (repeatable)")
    demo.add_argument("--lang", type=language_code, default=None, metavar="CODE",
                      help="speak CODE from the first word (e.g. es-US, or es under "
                           "transcriptionLanguage multi), as /lang CODE would; default: the "
                           "language Twilio hears")
    demo.add_argument("--port", type=int, default=0, help="port to serve on (default: any free)")
    demo.add_argument("--data-dir", type=Path, default=None,
                      help="where the SQLite store lives (default: a temporary folder)")
    demo.add_argument("--from", dest="from_number", default="+15555550100",
                      type=phone_number,
                      help="caller's number (default +15555550100); profiles in "
                           "config/profiles.yaml pick use cases by it")
    demo.add_argument("-v", "--verbose", action="store_true", help="show server logs")
    demo.add_argument("--web", action="store_true",
                      help="talk in the browser instead: serve the phone page (/phone) on "
                           "127.0.0.1 and print its URL; Ctrl-C stops")
    demo.set_defaults(run=_demo)

    call = commands.add_parser(
        "call", help="be the caller against a running server",
        description="Play Twilio against a running server: POST /twiml signed with the auth "
                    "token, open the relay socket, then type (or --say) what the caller says: "
                    "/interrupt, /dtmf 12, /lang es (speak another language), /hangup, /help.")
    call.add_argument("url", nargs="?", default="http://127.0.0.1:3000",
                      help="the server's base URL (default http://127.0.0.1:3000)")
    call.add_argument("--auth-token", default=os.environ.get("TWILIO_AUTH_TOKEN"),
                      help="sign requests as Twilio would (default: $TWILIO_AUTH_TOKEN)")
    call.add_argument("--from", dest="from_number", default="+15555550100",
                      type=phone_number,
                      help="the caller's number (default +15555550100); profiles pick use "
                           "cases by it")
    call.add_argument("--to", dest="to_number", default="+15555550199",
                      type=phone_number,
                      help="the number called (default +15555550199)")
    call.add_argument("--say", action="append", default=[], metavar="TEXT",
                      help="play a scripted caller instead of typing (repeatable)")
    call.add_argument("--lang", type=language_code, default=None, metavar="CODE",
                      help="speak CODE from the first word (e.g. es-US, or es under "
                           "transcriptionLanguage multi), as /lang CODE would; default: the "
                           "language Twilio hears")
    call.set_defaults(run=_call)
    add_commands(commands)
    bench_cli.add_command(commands)
    check.add_command(commands)
    init.add_command(commands)
    return parser


def _serve(args: argparse.Namespace) -> int:
    from voiceagent.app.dotenv_file import load_dotenv_file

    if args.env_file is not None and not args.env_file.is_file():
        raise SettingsError([f"--env-file: no file at {args.env_file}"])
    read = load_dotenv_file(args.env_file)
    settings = settings_for_serving()
    logs.configure(settings.log_format, settings.log_level, content=settings.log_content)
    if read is not None:
        log.info("settings read from a file too", extra={"env_file": str(read)})
    return int(trio.run(_serve_async, settings))


def settings_for_serving() -> Settings:
    """The settings, or one SettingsError with every problem: the settings' own and what
    would stop Bedrock (no region, no credentials), so a deploy fails once, not once per
    mistake."""
    from voiceagent.app.check_steps import serving_problems  # boto3 and the checks

    settings, problems = serving_problems()
    if problems or settings is None:
        raise SettingsError(problems)
    return settings


def _version() -> str:
    try:
        return metadata.version("voiceagent")
    except metadata.PackageNotFoundError:          # a source tree that was never installed
        return "unknown (not installed)"


async def _serve_async(settings: Settings) -> int:
    """The exit code: 0 after a SIGTERM, the stop a deploy, a scale-in or ``docker stop``
    asks for (ECS, compose and the entrypoint read anything else as a failure); 130 after
    a Ctrl-C, as a shell reports a command it interrupted, and as the other commands do.
    The drain is the same for both."""
    from voiceagent.app import heap
    from voiceagent.app.open_files import ensure_open_files
    from voiceagent.app.runtime import open_runtime
    from voiceagent.app.server import serve, serve_signals

    stop = trio.Event()
    stopped_by: list[signal.Signals] = []

    def code() -> int:
        return 128 + signal.SIGINT if stopped_by == [signal.SIGINT] else 0

    pauses = heap.record_gc_pauses()
    async with trio.open_nursery() as nursery:
        # before start-up: an early SIGTERM drains
        nursery.start_soon(serve_signals, stop, stopped_by.append)
        async with open_runtime(settings) as runtime:
            ensure_open_files(settings)             # once start-up went well: one line if not
            heap.settle_after_startup()
            log.info("twilio webhooks", extra=webhook_addresses(settings))
            if (unset := unset_public_url.warning(settings)) is not None:
                log.warning("PUBLIC_URL is not set: signatures are checked against each "
                            "request's own address", extra=unset)
            await serve(runtime, host=settings.host, port=settings.port, shutdown=stop,
                        exit_code=code)
            lag_ms = round((runtime.metrics.loop_lag_longest if runtime.metrics else 0) * 1e3, 2)
        nursery.cancel_scope.cancel()
    # what the process's calls waited for, beyond their own work (benchmarks read this line)
    log.info("server stopped", extra={"gc_pauses": pauses.summary(),
                                      "loop_lag_longest_ms": lag_ms, "exit_code": code()})
    return code()


def webhook_addresses(settings: Settings) -> dict[str, str]:
    """What to paste into the Twilio console, said at start-up: behind a tunnel the address
    Twilio calls is not the one the server binds, and a developer had to work it out."""
    from voiceagent.app.phone_page import PATH as PHONE_PATH
    from voiceagent.app.relay_route import DEFAULT_RELAY_PATH

    base = (settings.public_url or "").rstrip("/")
    said = ({"voice_url": f"{base}/twiml (POST)",
             "relay_socket": settings.ws_url or signature.to_ws(base) + DEFAULT_RELAY_PATH}
            if base else
            {"voice_url": "<the https address Twilio reaches>/twiml (POST)",
             "hint": "set PUBLIC_URL to that address (your tunnel's) so signatures check "
                     "against it"})
    if settings.phone_page:
        said["phone_page"] = f"http://{settings.host}:{settings.port}{PHONE_PATH}"
    return said


def _demo(args: argparse.Namespace) -> int:
    if args.web and args.say:
        raise CallerError("--say plays a scripted caller here; with --web the caller is "
                          "you, in the browser: use one or the other")
    if args.web and args.lang:
        raise CallerError("--lang sets the language of the caller at this terminal; with "
                          "--web the caller is you, in the browser: use one or the other")
    # --web: Ctrl-C ends a browser call at once (politely, with `end`), no 90 s drain
    web = {"PHONE_PAGE": True, "DRAIN_TIMEOUT_S": 0} if args.web else {}
    # the restaurant examples even in a project's folder, whose ./config needs its .env
    config_dir = os.environ.get("CONFIG_DIR") or str(packaged_config_dir())
    with tempfile.TemporaryDirectory(prefix="voiceagent-demo-") as scratch:
        settings = Settings.from_env(
            {k: v for k, v in os.environ.items() if k in ("TIME_ZONE", "TOOLS")},
            CONFIG_DIR=config_dir, STORE="sqlite", LLM="scripted", DEMO=True,
            VALIDATE_SIGNATURES=False,
            DATA_DIR=str(args.data_dir or scratch), HOST="127.0.0.1", PORT=args.port,
            LOG_FORMAT="console", LOG_LEVEL="INFO" if args.verbose else "WARNING", **web)
        logs.configure(settings.log_format, settings.log_level)
        print(DEMO_WARNING, file=sys.stderr)
        if _project_here():
            print(NOT_YOUR_AGENT, file=sys.stderr)
        return int(trio.run(_demo_async, settings, args))


def _project_here() -> bool:
    """A folder with use cases of its own (a project from `voiceagent init`), not the
    examples that demo runs: `voiceagent demo` there, the first thing tried, answered as the
    pizza place without a word on why."""
    here = LOCAL_CONFIG / "usecases"
    return (here.is_dir() and not os.environ.get("CONFIG_DIR")
            and here.resolve() != (packaged_config_dir() / "usecases").resolve())


async def _demo_async(settings: Settings, args: argparse.Namespace) -> int:
    from voiceagent.app.ctrl_c import signals_stop

    async with signals_stop() as stopping:
        # a second or more to import: a Ctrl-C meanwhile is taken as the signal already
        from voiceagent.app.server import open_server

        def code() -> int:
            """Also the watchdog's, should the shutdown stick: as the signal says, 130 for
            Ctrl-C, with --web too: a run Ctrl-C ended exits as `serve` and `call` do, and a
            script that starts the page and then stops it can tell an interrupt from a
            clean end."""
            return stopping.exit_code

        async with open_server(settings, exit_code=code) as (url, _):
            print(f"server listening on {url}", file=sys.stderr)
            if args.web:
                with stopping.talking():
                    await _serve_phone_page(url, args.from_number)
            else:
                await _converse(url, None, Identity(from_number=args.from_number), args.say,
                                stopping.talking, lang=args.lang)
    return code()


def phone_number(value: str) -> str:
    """argparse's check of --from/--to: profiles match the E.164 form Twilio sends, so a
    number without its + matched none and the default use case answered, silently."""
    if not E164.match(value):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not an E.164 number: + then country code and number, no spaces "
            "(e.g. +15551234567)")
    return value


def language_code(value: str) -> str:
    """argparse's check of --lang, the rule ``/lang`` applies: refused before the call, not
    a call whose every prompt reports a language Twilio never would."""
    if not LANGUAGE_TAG.fullmatch(value):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a language code: one as Twilio reports the caller's, letters "
            "then optional -subtags, no spaces (e.g. es-US, en-GB, or es under "
            "transcriptionLanguage multi)")
    return value


async def _serve_phone_page(url: str, from_number: str) -> None:
    """Print the phone page's URL and serve it until Ctrl-C (or SIGTERM)."""
    from urllib.parse import quote

    from voiceagent.app.phone_page import DEFAULT_FROM

    query = "" if from_number == DEFAULT_FROM else f"?from={quote(from_number)}"
    print(f"Talk to the agent in your browser: {url}/phone{query}", flush=True)
    print("(Chrome, Edge or Safari for speech; any browser to type. Ctrl-C stops.)",
          file=sys.stderr)
    await trio.sleep_forever()


def _call(args: argparse.Namespace) -> int:
    logs.configure("console", "WARNING")
    identity = Identity(from_number=args.from_number, to_number=args.to_number)
    trio.run(partial(_converse, args.url, args.auth_token, identity, args.say, lang=args.lang))
    return 0


async def _converse(url: str, auth_token: str | None, identity: Identity,
                    lines: Sequence[str],
                    talking: Callable[[], AbstractContextManager[None]] = nullcontext, *,
                    lang: str | None = None) -> None:
    """``talking``: what ends the conversation early (the demo's Ctrl-C); the call is then
    hung up as ``/hangup`` would. ``lang``: the language the caller speaks from the first
    word (``--lang``), as ``/lang`` sets it later: a use case that switches on the caller's
    language could only be tried after a first prompt in the language Twilio hears."""
    transcript = Transcript()
    async with open_call(url, auth_token=auth_token, identity=identity) as call:
        call.speaking = lang
        with talking():
            if lines:
                await scripted(call, lines, transcript)
            elif not sys.stdin.isatty():     # `echo hello | voiceagent call`: a script on stdin
                await scripted(call, piped_lines(), transcript)
            else:
                await interactive(call, transcript)
