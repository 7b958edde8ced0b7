"""``/dtmf`` in a caller script: keys the keypad lacks are refused here, not sent."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from tests.server_harness import AUTH_TOKEN, make_settings, running_server
from voiceagent.app.caller import open_call
from voiceagent.app.terminal import Transcript, _keys, scripted


@pytest.mark.parametrize(("line", "keys"), [
    ("/dtmf 1", "1"), ("/dtmf 1 2#", "12#"), ("/dtmf", None), ("/dtmf x", None),
    ("/dtmf 1x", None), ("/hangup", None), ("hello", None)])
def test_the_keys_of_a_dtmf_line(line: str, keys: str | None) -> None:
    assert _keys(line) == keys


async def test_a_key_the_keypad_lacks_is_not_sent_nor_waited_for(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--say "/dtmf x"` sent a frame the server drops, then waited for a reply until the
    idle re-prompt said "Are you still there?" 20 s later (s14-tutorial review)."""
    with trio.fail_after(10):
        async with running_server(make_settings(tmp_path)) as server:
            async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                await scripted(call, ["/dtmf x", "/dtmf 1"], Transcript())
    out = capsys.readouterr().out.splitlines()
    at = out.index("caller: /dtmf x")
    assert out[at:at + 3] == ["caller: /dtmf x",
                        "[usage: /dtmf 123 (keys 0-9, * and #); nothing was pressed]",
                        "caller: /dtmf 1"], out
    assert out[at + 3].startswith("agent: "), out
    assert "still there" not in "\n".join(out)
