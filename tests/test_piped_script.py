"""A caller script, piped or given with --say, is read as typed lines are: stripped."""

from __future__ import annotations

import io

import pytest

from voiceagent.app.cli import main

pytestmark = pytest.mark.timeout(90)


def test_a_piped_script_with_stray_spaces_presses_keys_and_hangs_up(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """As typed lines are ('  /dtmf 1' presses 1, '/hangup ' hangs up); a script that kept
    the spaces said '  /dtmf 1' to the agent as words and carried on past '/hangup '."""
    for name in ("CONFIG_DIR", "TIME_ZONE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("sys.stdin", io.StringIO("  /dtmf 1\n/hangup \nWhen are you open?\n"))
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "unknown command" not in out, out
    assert "didn't quite get that" not in out, out
    assert "When are you open?" not in out, out


def test_say_lines_with_stray_spaces_are_commands_too(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CONFIG_DIR", "TIME_ZONE"):
        monkeypatch.delenv(name, raising=False)
    assert main(["demo", "--say", " /dtmf 1", "--say", "/hangup ", "--say", "hello"]) == 0
    out = capsys.readouterr().out
    assert "[you hung up]" in out, out
    assert "caller: hello" not in out, out
    assert "didn't quite get that" not in out, out
