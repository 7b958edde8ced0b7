"""Structured logs: one JSON object per line in production, a readable line in a terminal.

Every line carries the CallSid and turn number of the task that wrote it (contextvars, which
``run_blocking`` copies into worker threads). Content (prompts, transcripts, tool inputs) is
never logged unless LOG_CONTENT is on; phone numbers go through ``mask_phone``.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
from typing import Any, Literal

call_sid_var: contextvars.ContextVar[str] = contextvars.ContextVar("call_sid", default="-")
turn_var: contextvars.ContextVar[int] = contextvars.ContextVar("turn", default=0)

_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}


def mask_phone(number: str) -> str:
    """+14155550123 -> +1415***0123: enough to tell callers apart in a log, not to call them."""
    if len(number) < 8:
        return "***" if number else ""
    return f"{number[:5]}***{number[-4:]}"


PHONE = re.compile(r"\+?\d[\d\s().-]{7,}\d")
CARD = re.compile(r"\b(?:\d[ -]?){13,19}\b")


def redact(text: str) -> str:
    """Content for a debug log: card-like and phone-like digit runs are masked first."""
    text = CARD.sub("[card]", text)
    return PHONE.sub(lambda m: mask_phone(re.sub(r"[^\d+]", "", m.group())), text)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.call_sid = call_sid_var.get()
        record.turn = turn_var.get()
        return True


class JsonFormatter(logging.Formatter):
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


class ConsoleFormatter(logging.Formatter):
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


def configure(fmt: Literal["auto", "json", "console"] = "auto", level: str = "INFO") -> None:
    """Install one handler on the root logger; safe to call more than once."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if use_json else ConsoleFormatter())
    handler.addFilter(_ContextFilter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_voiceagent", False)]:
        root.removeHandler(old)
    handler._voiceagent = True  # type: ignore[attr-defined]  # marks our handler for reconfigure
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("botocore", "urllib3", "hypercorn.access", "quart.serving"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
