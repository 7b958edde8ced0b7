"""A yes/no setting means the same to the start-up checks as to the setting itself: pydantic
takes t/y/on/1/yes/true as true, and a check that read "t" or "y" as false let a server start
that the check exists to stop."""

from __future__ import annotations

import pytest

from voiceagent.errors import SettingsError
from voiceagent.settings import Settings


@pytest.mark.parametrize("yes", ["t", "y", "T", "Y", "on", "1", "yes", "true"])
def test_signatures_on_without_a_token_stop_start_up_however_yes_is_spelled(yes: str) -> None:
    """Otherwise the server starts and answers every Twilio webhook 403 ("bad signature"),
    and the operator finds out from a silent phone line instead of one line at start-up."""
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"VALIDATE_SIGNATURES": yes})
    assert any(p.startswith("TWILIO_AUTH_TOKEN: required") for p in caught.value.problems)


@pytest.mark.parametrize("yes", ["t", "y"])
def test_the_phone_page_on_a_public_host_stops_start_up_however_yes_is_spelled(
        yes: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"PHONE_PAGE": yes, "HOST": "0.0.0.0", "TWILIO_AUTH_TOKEN": "x"})
    assert any(p.startswith("PHONE_PAGE: the browser phone") for p in caught.value.problems)


@pytest.mark.parametrize(("level", "form"), [("debug", "json"), ("Warning", "Console"),
                                             ("INFO", "AUTO")])
def test_log_level_and_format_take_any_case(level: str, form: str) -> None:
    """``LOG_LEVEL=debug`` stopped start-up with a list of the values it meant."""
    settings = Settings.from_env({"LOG_LEVEL": level, "LOG_FORMAT": form,
                                  "VALIDATE_SIGNATURES": "false"})
    assert (settings.log_level, settings.log_format) == (level.upper(), form.lower())


def test_an_unknown_log_level_still_names_the_choices() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"LOG_LEVEL": "verbose", "VALIDATE_SIGNATURES": "false"})
    [problem] = caught.value.problems
    assert problem.startswith("LOG_LEVEL")
    assert "DEBUG" in problem
