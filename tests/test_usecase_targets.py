"""A handoff mode must name where it sends the caller, and an entry's terminator must be one
key: each of these loaded, and then every handoff ended in "no one is available" (or a
number Twilio cannot dial), or no entry ever ended on a key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from voiceagent.catalog import read_config_dir
from voiceagent.errors import ConfigError
from voiceagent.tools.registry import default_registry
from voiceagent.usecases import UseCase


def _load(tmp_path: Path, **keys: Any) -> UseCase:
    folder = tmp_path / "config"
    (folder / "usecases").mkdir(parents=True)
    (folder / "usecases" / "desk.yaml").write_text(yaml.safe_dump({
        "name": "desk", "prompt": "You answer the phone.", **keys}))
    (use_case,) = read_config_dir(folder, default_registry()).use_cases
    return use_case


@pytest.mark.parametrize(("handoff", "key_path", "said"), [
    ({"mode": "enqueue"}, "handoff", "needs queue"),
    ({"mode": "dial"}, "handoff", "needs number"),
    ({"mode": "dial", "number": "555-0123"}, "handoff.number", ""),
    ({"mode": "enqueue", "workflow_sid": "WW123"}, "handoff.workflow_sid", ""),
])
def test_a_handoff_without_its_target_is_refused(tmp_path: Path, handoff: dict[str, Any],
                                                 key_path: str, said: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, handoff=handoff)
    assert caught.value.key_path == key_path
    assert said in caught.value.problem


@pytest.mark.parametrize("handoff", [
    {"mode": "enqueue", "queue": "front-desk"},
    {"mode": "enqueue", "workflow_sid": "WW" + "0" * 32},
    {"mode": "dial", "number": "+15555550123"},
    {"mode": "none"}])
def test_a_handoff_with_its_target_loads(tmp_path: Path, handoff: dict[str, Any]) -> None:
    loaded = _load(tmp_path, handoff=handoff).handoff
    assert loaded.model_dump(include=set(handoff)) == handoff


@pytest.mark.parametrize("terminator", ["", "##", "x"])
def test_a_terminator_is_one_key(tmp_path: Path, terminator: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, dtmf={"terminator": terminator})
    assert caught.value.key_path == "dtmf.terminator"


def test_a_star_ends_an_entry_too(tmp_path: Path) -> None:
    assert _load(tmp_path, dtmf={"terminator": "*"}).dtmf.terminator == "*"
