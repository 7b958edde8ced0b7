"""``voiceagent check``: is this set-up ready for a real call?

With the settings ``serve`` would use (the environment, then ``./.env`` for what it leaves
unset), it checks in order: the settings; the AWS credentials (STS); the DynamoDB table, or the
SQLite data folder; the use cases against the tools, as ``serve`` loads them; one token from
every model the use cases name, asked with their settings; Twilio's credentials and, with
``--number``, that number's voice webhook. One line per check, ✓ or ✗ (or skipped), and under
a failure what to do about it (notes under a pass; on a terminal, wrapped to its width).
Checks that need something an earlier one lacked are skipped, never crashed; every other check
runs whatever failed before it.

Exit code 1 when any check failed, 0 otherwise (skipped checks are not failures).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import sys
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import trio

from voiceagent import logs
from voiceagent.usecases import E164

if TYPE_CHECKING:
    from voiceagent.app.check_steps import CheckContext, Outcome

    Step = Callable[[CheckContext], Awaitable[list[Outcome]]]

log = logging.getLogger(__name__)

CHECK_THREADS = 8
DESCRIPTION = (
    "Check that a real call can work, with the settings `voiceagent serve` would use (the "
    "environment, then ./.env for what it leaves unset): the settings; the AWS credentials "
    "(STS); the DynamoDB table, or the SQLite data folder; the use cases against the tools, "
    "as serve loads them; one token from each model the use cases name, asked with their "
    "settings (temperature, guardrail...); Twilio's credentials "
    "and, with --number, the number's voice webhook. One line per check, and under a failure "
    "what to do. Exit code 1 when a check failed, else 0 (skipped checks are not failures).")


@dataclasses.dataclass(frozen=True, slots=True)
class Marks:
    passed: str
    failed: str
    skipped: str
    advice: str


UNICODE = Marks("✓", "✗", "○", "→")
ASCII = Marks("[ok]", "[FAIL]", "[skip]", "->")


def add_command(commands: Any) -> None:
    """Add ``check`` to ``voiceagent``'s subparsers (``argparse._SubParsersAction``)."""
    check = commands.add_parser(
        "check", help="check settings, AWS, the store, the tools, the models and Twilio "
                 "before a call",
        description=DESCRIPTION)
    check.add_argument("--number", type=_e164, default=None, metavar="+E164",
                       help="also check this Twilio number's voice webhook: PUBLIC_URL/twiml "
                            "with HTTP POST (e.g. +15551234567)")
    check.add_argument("--json", action="store_true",
                       help="print one JSON object (ok, checks) instead of the checklist")
    check.add_argument("-v", "--verbose", action="store_true",
                       help="also show the log lines of the parts checked (on stderr)")
    check.set_defaults(run=_check)


def _e164(value: str) -> str:
    if not E164.match(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not an E.164 number such as "
                                         "+15551234567")
    return value


def _check(args: argparse.Namespace) -> int:
    from voiceagent.app.dotenv_file import load_dotenv_file

    dotenv = load_dotenv_file()
    logs.configure("console", "INFO" if args.verbose else "CRITICAL")
    width = shutil.get_terminal_size().columns if sys.stdout.isatty() else None
    checklist = Checklist(sys.stdout, as_json=args.json, width=width)
    outcomes = trio.run(run_checks, dotenv, args.number, checklist.show)
    checklist.finish(outcomes)
    return 1 if any(o.status == "fail" for o in outcomes) else 0


async def run_checks(dotenv: Path | None, number: str | None,
                     show: Callable[[Outcome], None]) -> list[Outcome]:
    """Every check in order, each outcome shown as soon as it is known."""
    from voiceagent.app.check_steps import CheckContext, settings_outcome, skipped

    outcomes: list[Outcome] = []
    steps = _steps()

    def note(outcome: Outcome) -> None:
        outcomes.append(outcome)
        show(outcome)

    settings, outcome = settings_outcome(dotenv)
    note(outcome)
    if settings is None:
        for name, _ in steps:
            note(skipped(name, "needs valid settings, see above"))
        return outcomes
    context = CheckContext(settings, trio.CapacityLimiter(CHECK_THREADS), number=number)
    for name, step in steps:
        for outcome in await _guarded(name, step, context):
            note(outcome)
    return outcomes


def _steps() -> tuple[tuple[str, Step], ...]:
    """Imported here, so boto3 and the Bedrock backend load only when a check runs."""
    from voiceagent.app.check_config import config_check
    from voiceagent.app.check_models import model_checks
    from voiceagent.app.check_steps import aws_identity, store_check
    from voiceagent.app.check_twilio import twilio_checks

    return (("AWS credentials", aws_identity), ("store", store_check),
            ("use cases and tools", config_check), ("Bedrock models", model_checks),
            ("Twilio", twilio_checks))


async def _guarded(name: str, step: Step, context: CheckContext) -> list[Outcome]:
    """A check that breaks in a way it does not know is one failed line, not a crash, so
    the checks after it still run."""
    from voiceagent.app.check_steps import failed

    try:
        return await step(context)
    except Exception as err:
        log.exception("check failed unexpectedly", extra={"check": name})
        return [failed(name, f"the check itself failed: {type(err).__name__}: {err}",
                       "run `voiceagent check --verbose` for the log lines; report it if it "
                       "persists")]


class Checklist:
    """Prints outcomes as a checklist (✓/✗, ASCII when the stream cannot encode them), or
    collects them for one JSON object at the end. ``width``: a terminal's, to which each line
    and each advice is wrapped, indented under itself; None (a pipe, a file) keeps one line
    each, for whatever reads them."""

    MIN_WIDTH = 40

    def __init__(self, stream: TextIO, *, as_json: bool, width: int | None = None) -> None:
        self._stream = stream
        self._as_json = as_json
        self._width = None if width is None else max(width, self.MIN_WIDTH)
        self._ascii = not _can_encode(stream, UNICODE.passed + UNICODE.failed
                                      + UNICODE.skipped + UNICODE.advice)
        self.marks = ASCII if self._ascii else UNICODE

    def show(self, outcome: Outcome) -> None:
        if self._as_json:
            return
        mark = {"pass": self.marks.passed, "fail": self.marks.failed,
                "skip": self.marks.skipped}[outcome.status]
        detail = outcome.detail if outcome.status != "skip" else f"skipped ({outcome.detail})"
        lines = [self._wrap(f"{mark} {outcome.name}: {detail}", "  ")]
        lines += [self._wrap(f"    {self.marks.advice} {line}", "      ")
                  for line in outcome.advice]
        self._write("\n".join(lines) + "\n")

    def _wrap(self, line: str, indent: str) -> str:
        if self._width is None or len(line) <= self._width:
            return line
        return textwrap.fill(line, self._width, subsequent_indent=indent,
                             break_long_words=False, break_on_hyphens=False)

    def finish(self, outcomes: list[Outcome]) -> None:
        failures = sum(o.status == "fail" for o in outcomes)
        if self._as_json:
            document = {"ok": failures == 0,
                        "checks": [dataclasses.asdict(o) for o in outcomes]}
            self._write(json.dumps(document, indent=2) + "\n")
            return
        skips = sum(o.status == "skip" for o in outcomes)
        skipped_text = f", {skips} skipped" if skips else ""
        if failures:
            summary = f"{failures} of {len(outcomes)} checks failed{skipped_text}"
        else:
            summary = f"all {len(outcomes) - skips} checks passed{skipped_text}"
        self._write(f"\n{summary}\n")

    def _write(self, text: str) -> None:
        if self._ascii:
            text = text.encode("ascii", "replace").decode("ascii")
        self._stream.write(text)
        self._stream.flush()


def _can_encode(stream: TextIO, text: str) -> bool:
    try:
        text.encode(getattr(stream, "encoding", None) or "ascii")
    except (UnicodeEncodeError, LookupError):
        return False
    return True
