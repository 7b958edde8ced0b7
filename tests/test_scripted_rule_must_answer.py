"""A ``scripted.rules`` entry has ``reply``, or ``tool`` (with an optional ``reply`` said first
and ``then``), or both (config/README.md). A rule with neither loaded and, when it matched,
stopped the search with the fallback, so the rules after it never ran; a ``then`` without a
``tool`` was kept and never said."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from voiceagent.catalog import read_config_dir
from voiceagent.errors import ConfigError
from voiceagent.tools.registry import default_registry


@pytest.mark.parametrize("rule", [{"match": "hours"},
                                  {"match": "hours", "then": "We open at {time}."}])
def test_a_rule_that_says_nothing_is_refused(tmp_path: Path, rule: dict[str, Any]) -> None:
    folder = tmp_path / "config"
    (folder / "usecases").mkdir(parents=True)
    (folder / "usecases" / "rules.yaml").write_text(yaml.safe_dump({
        "name": "rules", "prompt": "You answer the phone.",
        "scripted": {"rules": [rule, {"match": "hours", "reply": "We open at nine."}]}}))
    with pytest.raises(ConfigError) as caught:
        read_config_dir(folder, default_registry())
    assert caught.value.key_path.startswith("scripted.rules[0]")
