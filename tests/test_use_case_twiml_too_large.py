"""A use case whose TwiML cannot fit Twilio's 64 KB limit (hints, a greeting) loaded without
a word, and every call to it was then refused at /twiml with a 500: callers heard Twilio's
application error. ``config load`` (read_config_dir) now refuses the file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from voiceagent import twiml
from voiceagent.catalog import read_config_dir
from voiceagent.errors import ConfigError
from voiceagent.store import config_records
from voiceagent.tools.registry import default_registry
from voiceagent.usecases import UseCase


def _config_dir(tmp_path: Path, hints: str) -> Path:
    (tmp_path / "usecases").mkdir()
    use_case = {"name": "bigHints", "prompt": "You answer the phone.",
                "relay": {"welcomeGreeting": "Hello", "hints": hints}}
    (tmp_path / "usecases" / "bigHints.yaml").write_text(yaml.safe_dump(use_case),
                                                          encoding="utf-8")
    return tmp_path


def test_a_use_case_over_the_limit_is_refused_when_loaded(tmp_path: Path) -> None:
    hints = ",".join(f"dish number {i}" for i in range(6000))       # about 80 KB
    with pytest.raises(ConfigError) as caught:
        read_config_dir(_config_dir(tmp_path, hints), default_registry())
    err = caught.value
    assert err.path.endswith("bigHints.yaml")
    assert err.key_path == "relay"
    assert "65536-byte limit" in err.problem


def test_one_that_fits_with_room_for_the_urls_loads_and_renders(tmp_path: Path) -> None:
    hints = ",".join(f"dish number {i}" for i in range(3000))       # about 40 KB
    (use_case,) = read_config_dir(_config_dir(tmp_path, hints), default_registry()).use_cases
    document = twiml.connect_relay(
        ws_url="wss://" + "h" * 200 + "/relay", action_url="https://" + "h" * 200 + "/action",
        use_case=use_case, parameters={"sessionToken": "t" * 24})
    assert len(document.encode()) <= twiml.MAX_TWIML_BYTES


def test_a_stored_use_case_over_the_limit_still_loads() -> None:
    """The check is on files only: an item an older version stored is read as it was."""
    big = UseCase.model_validate({"name": "big", "prompt": "p",
                                  "relay": {"hints": "x" * 70_000}})
    assert config_records.use_case_from_item(config_records.use_case_item(big)) == big
