"""A piped caller script is read as typed lines are: stripped."""

from __future__ import annotations

import io

import pytest

from voiceagent.app.cli import main

pytestmark = pytest.mark.timeout(90)


def test_a_piped_script_with_stray_spaces_presses_keys_and_hangs_up(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Before, piped input went through `interactive`, which strips each line: '  /dtmf 1'
    pressed 1 and '/hangup ' hung up. The piped script keeps the spaces: '  /dtmf 1' is
    said to the agent as words ('Sorry, I didn't quite get that') and '/hangup ' is an
    unknown command, so the script carries on."""
    for name in ("CONFIG_DIR", "TIME_ZONE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("sys.stdin", io.StringIO("  /dtmf 1\n/hangup \nWhen are you open?\n"))
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "unknown command" not in out, out
    assert "didn't quite get that" not in out, out
    assert "When are you open?" not in out, out
