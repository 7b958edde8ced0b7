"""The stamp on the ``end`` frame's handoff data that tells ``/action`` the language the call
last spoke and its use case: added only where it changes what ``/action`` says, never over
the sender's own keys, and never to data that is not a JSON object."""

from __future__ import annotations

import json
from typing import Any

import pytest

from voiceagent import handoff_language
from voiceagent.usecases import UseCase, parse_model


def _use_case(**changes: Any) -> UseCase:
    return parse_model(UseCase, {"name": "test", "prompt": "p", **changes}, "config/test.yaml")


@pytest.mark.parametrize(("sent", "stamped"), [
    (None, {"ttsLanguage": "es-US", "useCase": "cantina"}),
    (json.dumps({"reasonCode": "end-call"}),
     {"reasonCode": "end-call", "ttsLanguage": "es-US", "useCase": "cantina"}),
    # the sender's own keys stand
    (json.dumps({"handoff": True, "useCase": "other"}),
     {"handoff": True, "useCase": "other", "ttsLanguage": "es-US"}),
])
def test_the_end_s_json_object_gains_the_language_and_use_case(
        sent: str | None, stamped: dict[str, Any]) -> None:
    result = handoff_language.stamped(sent, "es-US", "cantina")
    assert result is not None
    assert json.loads(result) == stamped


@pytest.mark.parametrize("sent", ["transfer-to-billing", "[1, 2]", "",
                                  json.dumps({"ttsLanguage": "fr", "useCase": "x"})])
def test_data_that_is_not_an_object_or_has_both_keys_goes_as_it_came(sent: str) -> None:
    assert handoff_language.stamped(sent, "es-US", "cantina") == sent


def test_only_a_use_case_with_words_of_its_own_for_action_is_stamped() -> None:
    assert not handoff_language.needed(_use_case(languages=[{"code": "es-US"}]))
    assert not handoff_language.needed(_use_case(lines={"reprompt": "¿Sigue ahí?"}))
    assert handoff_language.needed(_use_case(lines={"goodbye": "Adiós."}))
    assert handoff_language.needed(_use_case(languages=[{"code": "es-US",
                                                         "handoff_message": "Le paso."}]))
    assert handoff_language.needed(_use_case(languages=[{"code": "es-US",
                                                         "lines": {"no_agent": "Nadie."}}]))
