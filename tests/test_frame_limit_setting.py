"""MAX_FRAME_BYTES is the reader's limit on one frame from Twilio (bigger ones are dropped,
the call goes on); hypercorn closes the socket itself above its own message limit, so a
MAX_FRAME_BYTES above that would never take effect: it is refused at start-up instead."""

from __future__ import annotations

import pytest

from voiceagent.app.server import HARD_FRAME_LIMIT
from voiceagent.errors import SettingsError
from voiceagent.settings import Settings

BASE = {"VALIDATE_SIGNATURES": "false"}


def test_a_frame_limit_above_the_server_s_own_is_refused_with_the_bound() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({**BASE, "MAX_FRAME_BYTES": str(HARD_FRAME_LIMIT + 1)})
    problem = next(p for p in caught.value.problems if p.startswith("MAX_FRAME_BYTES"))
    assert str(HARD_FRAME_LIMIT) in problem


def test_the_server_s_own_limit_is_the_largest_taken() -> None:
    settings = Settings.from_env({**BASE, "MAX_FRAME_BYTES": str(HARD_FRAME_LIMIT)})
    assert settings.max_frame_bytes == HARD_FRAME_LIMIT
