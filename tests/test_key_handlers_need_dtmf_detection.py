"""A use case file with key handlers but no dtmfDetection loaded, and its handlers never ran:
Twilio sends no keys unless dtmfDetection is true (off by default). Such a file is refused
at load with the fix; detection turned on mid-call by a relay update counts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from voiceagent.catalog import read_config_dir
from voiceagent.errors import ConfigError
from voiceagent.tools.registry import default_registry

HANDLERS = {"handlers": {"0": {"reply": "Transferring you now."}}}


def _folder(tmp_path: Path, **use_case: Any) -> Path:
    (tmp_path / "usecases").mkdir()
    data = {"name": "desk", "prompt": "Answer briefly.", **use_case}
    (tmp_path / "usecases" / "desk.yaml").write_text(yaml.safe_dump(data))
    return tmp_path


@pytest.mark.parametrize("relay", [{}, {"dtmfDetection": False}, {"dtmfDetection": "false"}])
def test_handlers_without_detection_are_refused_with_the_fix(
        tmp_path: Path, relay: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as caught:
        read_config_dir(_folder(tmp_path, relay=relay, dtmf=HANDLERS), default_registry())
    assert caught.value.key_path == "dtmf.handlers"
    assert "dtmfDetection: true" in caught.value.problem
    assert caught.value.path.endswith("desk.yaml")


@pytest.mark.parametrize("changes", [
    {"relay": {"dtmfDetection": True}, "dtmf": HANDLERS},
    {"relay": {"dtmfDetection": "true"}, "dtmf": HANDLERS},
    {"dtmf": HANDLERS, "relay_updates": [{"when": {"caller_says": "keypad"},
                                          "config": {"dtmfDetection": True}}]},
    {"relay": {}},                                  # no handlers: nothing to run
])
def test_handlers_that_can_hear_keys_load(tmp_path: Path, changes: dict[str, Any]) -> None:
    loaded = read_config_dir(_folder(tmp_path, **changes), default_registry())
    assert [u.name for u in loaded.use_cases] == ["desk"]
