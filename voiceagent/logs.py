"""Structured logs: one JSON object per line in production, a readable line in a terminal.

Every line carries the CallSid and turn number of the task that wrote it (contextvars, which
``run_blocking`` copies into worker threads). Content (prompts, transcripts, tool inputs) is
never logged unless LOG_CONTENT is on; phone numbers go through ``mask_phone``. A logged
exception keeps its types and frames, but its message and notes are hidden unless LOG_CONTENT
is on: a bug's message is often built from what it was handed (a KeyError naming a caller's
words, a tool's error, a service that quotes its input).
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
import traceback
from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Literal

call_sid_var: contextvars.ContextVar[str] = contextvars.ContextVar("call_sid", default="-")
turn_var: contextvars.ContextVar[int] = contextvars.ContextVar("turn", default=0)
_told: set[Hashable] = set()        # warn_once's keys, told about once per process


@contextmanager
def for_call(call_sid: str) -> Iterator[None]:
    """Lines logged inside name ``call_sid``: for a task that serves every call (the
    write-behind's drainer) doing one call's work."""
    token = call_sid_var.set(call_sid)
    try:
        yield
    finally:
        call_sid_var.reset(token)

_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}


def warn_once(logger: logging.Logger, key: Hashable, message: str, **extra: Any) -> None:
    """A warning about what is the same on every request (a model that refuses what a use
    case sends it): said once per process and ``key``, not on every turn of every call."""
    if key not in _told:
        _told.add(key)
        logger.warning(message, extra=extra)


def mask_phone(number: str) -> str:
    """+14155550123 -> +1415***0123: enough to tell callers apart in a log, not to call them."""
    if len(number) < 8:
        return "***" if number else ""
    return f"{number[:5]}***{number[-4:]}"


PHONE = re.compile(r"\+?\d[\d\s().-]{7,}\d")
CARD = re.compile(r"\b\d(?:[ -]?\d){12,18}\b")    # separators between digits, not after


def redact(text: str) -> str:
    """Content for a debug log: card-like and phone-like digit runs are masked first."""
    text = CARD.sub("[card]", text)
    return PHONE.sub(lambda m: mask_phone(re.sub(r"[^\d+]", "", m.group())), text)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        call_sid = call_sid_var.get()
        # a line that names its call (a tool's ctx.log) keeps it where the context has none:
        # a thread a tool or its library started itself does not inherit the contextvars
        if call_sid != "-" or not isinstance(getattr(record, "call_sid", None), str):
            record.call_sid = call_sid
        record.turn = turn_var.get()
        return True


ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]


class _Formatter(logging.Formatter):
    def __init__(self, *, content: bool = False) -> None:
        super().__init__()
        self.content = content             # LOG_CONTENT: exception messages shown

    def formatException(self, ei: ExcInfo) -> str:
        if self.content or ei[1] is None:
            return super().formatException(ei)
        return "".join(_masked(ei[1], set())).rstrip("\n")


def _masked(exc: BaseException, seen: set[int]) -> list[str]:
    """``traceback.format_exception``'s frames, causes and groups, each message hidden."""
    seen.add(id(exc))
    lines: list[str] = []
    if exc.__cause__ is not None and id(exc.__cause__) not in seen:
        lines += [*_masked(exc.__cause__, seen), "\nThe above exception was the direct cause "
                  "of the following exception:\n\n"]
    elif (exc.__context__ is not None and not exc.__suppress_context__
          and id(exc.__context__) not in seen):
        lines += [*_masked(exc.__context__, seen), "\nDuring handling of the above exception, "
                  "another exception occurred:\n\n"]
    if exc.__traceback__ is not None:
        lines += ["Traceback (most recent call last):\n",
                  *traceback.format_tb(exc.__traceback__)]
    kind = type(exc)
    name = (kind.__qualname__ if kind.__module__ in ("builtins", "__main__")
            else f"{kind.__module__}.{kind.__qualname__}")
    lines.append(f"{name}{_hidden(exc)}\n")
    inner_exceptions = exc.exceptions if isinstance(exc, BaseExceptionGroup) else ()
    for n, inner in enumerate(inner_exceptions, start=1):
        lines.append(f"  +---- {n} ----\n")
        lines += ["  | " + line for line in "".join(_masked(inner, seen)).splitlines(True)]
    return lines


def _hidden(exc: BaseException) -> str:
    """Its size only: enough to tell an empty message from one worth turning LOG_CONTENT on."""
    try:
        size = f"{len(str(exc)) + sum(len(str(n)) for n in getattr(exc, '__notes__', ()))}"
    except Exception:                      # a broken __str__ must not lose the log line
        size = "?"
    return f": [message hidden ({size} characters); LOG_CONTENT=true shows it]" * (size != "0")


class JsonFormatter(_Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        entry.update(_fields(record))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class ConsoleFormatter(_Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record)
        call = fields.pop("call_sid", "-")
        turn = fields.pop("turn", 0)
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        where = f" [{call[-6:]}#{turn}]" if call != "-" else ""
        extra = " ".join(f"{k}={v}" for k, v in fields.items())
        line = f"{stamp} {record.levelname[:4]:4} {record.name}{where} {record.getMessage()}"
        line = f"{line} {extra}" if extra else line
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure(fmt: Literal["auto", "json", "console"] = "auto", level: str = "INFO", *,
              content: bool = False) -> None:
    """Install one handler on the root logger; safe to call more than once. ``content``
    (LOG_CONTENT): exceptions' messages are logged too."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    formatter = JsonFormatter if use_json else ConsoleFormatter
    handler.setFormatter(formatter(content=content))
    handler.addFilter(_ContextFilter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_voiceagent", False)]:
        root.removeHandler(old)
    handler._voiceagent = True  # type: ignore[attr-defined]  # marks our handler for reconfigure
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("botocore", "urllib3", "hypercorn.access", "quart.serving"):
        # at least WARNING, and never below the level asked for: `voiceagent check` asks
        # for CRITICAL, and botocore's tracebacks of a failed SSO refresh buried its checklist
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
