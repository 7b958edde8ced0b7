"""A logged exception (``log.exception``, ``exc_info``) put its message in the log line's
``exc``: a bug whose message was built from what it was handed (a KeyError naming the
caller's words, a tool's error, Bedrock quoting its input) wrote them into production logs,
which never hold content by default. Now the types, frames, causes and groups stay, and each
message is hidden unless LOG_CONTENT is on. Real output of ``logs.configure``'s handler."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Literal

import pytest

from voiceagent import logs

SECRET = "SENTINEL-TRANSCRIPT-7373"
log = logging.getLogger("tests.logged_exception")


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _lookup_the_order(said: str) -> None:
    orders: dict[str, int] = {}
    try:
        orders[said] += 1
    except KeyError as err:
        raise ValueError(f"no order for {said!r}") from err


def _log_a_failure(fmt: Literal["json", "console"], content: bool,
                   capsys: pytest.CaptureFixture[str]) -> str:
    logs.configure(fmt, "INFO", content=content)     # binds to the captured stderr
    capsys.readouterr()
    try:
        try:
            _lookup_the_order(SECRET)
        except ValueError as err:
            err.add_note(f"while reading {SECRET}")
            raise ExceptionGroup("turn failed", [err, RuntimeError()]) from None
    except ExceptionGroup:
        log.exception("turn failed unexpectedly")
    return capsys.readouterr().err


def test_a_logged_exception_keeps_its_frames_and_hides_its_message(
        capsys: pytest.CaptureFixture[str], restore_logging: None) -> None:
    entry = json.loads(_log_a_failure("json", False, capsys))
    assert entry["event"] == "turn failed unexpectedly"
    exc = entry["exc"]
    assert SECRET not in exc
    lines = exc.splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert "ExceptionGroup: [message hidden (30 characters); LOG_CONTENT=true shows it]" in lines
    assert "  | KeyError: [message hidden (26 characters); LOG_CONTENT=true shows it]" in lines
    assert ("  | The above exception was the direct cause of the following exception:"
            in lines)
    assert "  | ValueError: [message hidden (77 characters); LOG_CONTENT=true shows it]" in lines
    assert "  | RuntimeError" in lines                      # no message: nothing hidden
    assert any("in _lookup_the_order" in line for line in lines)
    assert any("orders[said] += 1" in line for line in lines)
    console = _log_a_failure("console", False, capsys)
    assert SECRET not in console
    assert "ValueError: [message hidden (77 characters)" in console


def test_log_content_shows_the_messages(capsys: pytest.CaptureFixture[str],
                                        restore_logging: None) -> None:
    exc = json.loads(_log_a_failure("json", True, capsys))["exc"]
    assert f"ValueError: no order for '{SECRET}'" in exc
    assert f"while reading {SECRET}" in exc
