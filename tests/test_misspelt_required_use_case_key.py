"""A required key misspelt in a use-case file (``promt:``) was reported as the key that is
missing (``prompt: Field required``), pydantic's first error, while the key actually written,
the cause, went unsaid; it is now reported as that unknown key, with the name it should have.
An unknown key with no required key missing beside it is reported as before."""

from __future__ import annotations

from pathlib import Path

import pytest

from voiceagent.errors import ConfigError
from voiceagent.usecases import load_profiles_file, load_use_case_file

USE_CASE = """\
name: shop
prompt: You answer the phone for the shop.
tools:
  - name: lookUp
    description: Looks a thing up.
    input_schema: {type: object}
"""


def problem(path: Path, text: str) -> str:
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_use_case_file(path)
    return str(caught.value)


def test_a_misspelt_required_key_is_named_as_written(tmp_path: Path) -> None:
    path = tmp_path / "shop.yaml"
    said = problem(path, USE_CASE.replace("prompt:", "promt:"))
    assert said == (f"{path}: promt: unknown key (did you mean prompt? it is required; see "
                    "config/README.md for the keys)")
    said = problem(path, USE_CASE.replace("  - name: lookUp", "  - nam: lookUp"))
    assert said.startswith(f"{path}: tools[0].nam: unknown key (did you mean name?")


def test_a_missing_key_with_no_look_alike_is_said_missing(tmp_path: Path) -> None:
    path = tmp_path / "shop.yaml"
    said = problem(path, USE_CASE.replace("prompt: You", "persona: You"))
    assert said == f"{path}: prompt: Field required"
    said = problem(path, USE_CASE + "persona: {max_tokens: 10}\n")
    assert said == (f"{path}: persona: unknown key (check the spelling; see "
                    "config/README.md for the keys)")


def test_a_profile_too(tmp_path: Path) -> None:
    path = tmp_path / "profiles.yaml"
    path.write_text("profiles:\n  - phne: '+15555550100'\n    first_name: Pat\n")
    with pytest.raises(ConfigError, match=r"profiles\[0\]\.phne: unknown key \(did you mean "
                                          r"phone\?"):
        load_profiles_file(path)


@pytest.mark.parametrize(("misspelt", "written", "meant"), [
    ("dtmf:\n  handler: {}\n", "dtmf.handler", "handlers"),
    ("scripted:\n  rules:\n    - match: hi\n      reply: Hi.\n      them: Bye.\n",
     "scripted.rules[0].them", "then"),
    ("dtmf:\n  handlers:\n    '1': {reply: Hi., interruptable: true}\n",
     "dtmf.handlers.1.interruptable", "interruptible"),
    ("handof:\n  mode: none\n", "handof", "handoff"),
    ("tools:\n  - name: lookUp\n    description: Looks.\n    timeout: 3\n",
     "tools[0].timeout", "timeout_s"),
])
def test_an_optional_key_misspelt_is_told_the_key_it_looks_like(
        tmp_path: Path, misspelt: str, written: str, meant: str) -> None:
    """An optional key misspelt got only 'check the spelling', the allowed keys left to be
    found in config/README.md: ``them:`` for ``then:`` in a scripted rule, ``handler:`` in
    ``dtmf``."""
    path = tmp_path / "shop.yaml"
    text = USE_CASE if not misspelt.startswith("tools:") else "name: shop\nprompt: Hi.\n"
    said = problem(path, text + misspelt)
    assert said == (f"{path}: {written}: unknown key (did you mean {meant}? see "
                    "config/README.md for the keys)")


THEN_CASES = """\
scripted:
  rules:
    - match: look
      tool: {name: lookUp}
      then:
        - say: Found it.
          when: {found: true}
        - say: Not found.
"""


@pytest.mark.parametrize("misspelt", ["sya", "sai"])
def test_a_short_key_one_slip_off_is_told_the_key_it_looks_like(
        tmp_path: Path, misspelt: str) -> None:
    """``sya:`` for ``say:`` in a scripted ``then`` case came out as ``say: Field required``:
    difflib rates a three-letter key with two letters swapped 0.67, under the cut-off, so the
    key actually written went unsaid. One slip (swapped, wrong, missing) is a look-alike."""
    path = tmp_path / "shop.yaml"
    said = problem(path, USE_CASE + THEN_CASES.replace("- say: Found", f"- {misspelt}: Found"))
    assert said == (f"{path}: scripted.rules[0].then[0].{misspelt}: unknown key (did you mean "
                    "say? it is required; see config/README.md for the keys)")
