"""``inference`` and ``model_options`` values that ConverseStream refuses on every request are
refused when the file loads. A stop sequence must be at least one character, a guardrail
version a number or DRAFT, a guardrail id Bedrock's id or ARN (Bedrock's API reference,
InferenceConfiguration and GuardrailStreamConfiguration); such a value used to load and then
cost every turn of every call a ValidationException and an apology. A guardrail version
without a guardrail id was kept and never sent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from voiceagent.catalog import read_config_dir
from voiceagent.errors import ConfigError
from voiceagent.llm.base import LLMRequest
from voiceagent.llm.bedrock_converse import build_converse_request
from voiceagent.tools.registry import default_registry
from voiceagent.usecases import UseCase


def _load(tmp_path: Path, **changes: Any) -> UseCase:
    folder = tmp_path / "config"
    (folder / "usecases").mkdir(parents=True)
    (folder / "usecases" / "model.yaml").write_text(yaml.safe_dump({
        "name": "model", "prompt": "You answer the phone.", **changes}))
    return read_config_dir(folder, default_registry()).use_cases[0]


@pytest.mark.parametrize(("changes", "key_path"), [
    ({"inference": {"stop_sequences": ["Caller:", ""]}}, "inference.stop_sequences[1]"),
    ({"model_options": {"guardrail_version": "2"}}, "model_options.guardrail_version"),
    ({"model_options": {"guardrail_id": "abc123", "guardrail_version": "v2"}},
     "model_options.guardrail_version"),
    ({"model_options": {"guardrail_id": "My Guardrail"}}, "model_options.guardrail_id"),
])
def test_values_bedrock_refuses_are_refused_at_load(tmp_path: Path, changes: dict[str, Any],
                                                    key_path: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, **changes)
    assert caught.value.key_path == key_path


def test_accepted_values_reach_the_request(tmp_path: Path) -> None:
    arn = "arn:aws:bedrock:us-east-1:111122223333:guardrail/abc123"
    use_case = _load(tmp_path, inference={"stop_sequences": ["Caller:"]},
                     model_options={"guardrail_id": arn, "guardrail_version": "DRAFT"})
    body = build_converse_request(LLMRequest(
        call_sid="CA1", use_case="model", model_id="m", system=("x",),
        messages=({"role": "user", "content": [{"text": "hi"}]},),
        inference=use_case.inference.to_config(), options=use_case.model_options.to_options()))
    assert body["inferenceConfig"]["stopSequences"] == ["Caller:"]
    assert body["guardrailConfig"]["guardrailIdentifier"] == arn
    assert body["guardrailConfig"]["guardrailVersion"] == "DRAFT"
