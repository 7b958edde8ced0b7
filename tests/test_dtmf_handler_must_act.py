"""A ``dtmf.handlers`` entry must do something: config/README.md says a handler has ``reply``,
``tool`` (with ``input``) and/or ``to_model``. One with none of them was loaded, and its key
then started a turn that said nothing and cut off the reply the caller was hearing; an
``input`` without a ``tool`` was kept and never used."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from voiceagent.catalog import read_config_dir
from voiceagent.errors import ConfigError
from voiceagent.tools.registry import default_registry
from voiceagent.usecases import UseCase


def _load(tmp_path: Path, handler: dict[str, Any]) -> UseCase:
    folder = tmp_path / "config"
    (folder / "usecases").mkdir(parents=True)
    (folder / "usecases" / "keys.yaml").write_text(yaml.safe_dump({
        "name": "keys", "prompt": "You answer the phone.", "relay": {"dtmfDetection": True},
        "dtmf": {"handlers": {"5": handler}}}))
    (use_case,) = read_config_dir(folder, default_registry()).use_cases
    return use_case


@pytest.mark.parametrize("handler", [{}, {"to_model": False}, {"input": {"x": 1}},
                                     {"reply": "One moment.", "input": {"x": 1}}])
def test_a_handler_that_does_nothing_is_refused(tmp_path: Path,
                                               handler: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, handler)
    assert caught.value.key_path.startswith("dtmf.handlers.5")


@pytest.mark.parametrize("handler", [{"reply": "We open at nine."}, {"to_model": True}])
def test_a_handler_that_acts_loads(tmp_path: Path, handler: dict[str, Any]) -> None:
    loaded = _load(tmp_path, handler).dtmf.handlers["5"]
    assert loaded.model_dump(include=set(handler)) == handler
