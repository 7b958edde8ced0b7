"""A name in .env that is a typo away from a setting (TWILIO_AUTH_TOKN, MAX_CALS) was silently
ignored: the setting it meant kept its default, or was reported missing with nothing to say
why. ``load_dotenv_file`` now names each such line on stderr with the setting it looks like;
the names voiceagent's files document, and names far from any setting, pass without a word."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from voiceagent.app.dotenv_file import load_dotenv_file, misspelt_names

ROOT = Path(__file__).resolve().parent.parent


def test_a_typo_names_the_setting_it_meant(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("TWILIO_AUTH_TOKN", "MAX_CALS", "AWS_PROFLE", "MY_API_KEY", "NGROK_DOMAIN",
                 "AWS_ENDPOINT_URL_S3", "PORT"):
        # set, then deleted: monkeypatch then removes what load_dotenv_file writes into
        # os.environ (delenv alone, of a name not set, records nothing to undo)
        monkeypatch.setenv(name, "placeholder")
        monkeypatch.delenv(name)
    (tmp_path / ".env").write_text("TWILIO_AUTH_TOKN=abc\nMAX_CALS=10\nAWS_PROFLE=dev\n"
                                   "MY_API_KEY=mine\nNGROK_DOMAIN=x.ngrok.app\n"
                                   "AWS_ENDPOINT_URL_S3=http://127.0.0.1:9\nPORT=3001\n")
    assert load_dotenv_file() == Path(".env")
    said = capsys.readouterr().err.splitlines()
    assert said == [
        "voiceagent: .env: TWILIO_AUTH_TOKN is not a setting (nothing reads it); did you "
        "mean TWILIO_AUTH_TOKEN?",
        "voiceagent: .env: MAX_CALS is not a setting (nothing reads it); did you mean "
        "MAX_CALLS?",
        "voiceagent: .env: AWS_PROFLE is not a setting (nothing reads it); did you mean "
        "AWS_PROFILE?"]


@pytest.mark.parametrize("example", [".env.example",
                                     "voiceagent/scaffold/templates/env.example.tmpl"])
def test_every_name_the_examples_list_passes(example: str, tmp_path: Path) -> None:
    text = (ROOT / example).read_text()
    names = sorted(set(re.findall(r"^#? ?([A-Z][A-Z0-9_]*)=", text, re.MULTILINE)))
    assert len(names) > 5
    dotenv = tmp_path / ".env"
    dotenv.write_text("".join(f"{name}=x\n" for name in names))
    assert misspelt_names(dotenv) == []


def test_serve_says_the_typo_above_the_setting_it_left_missing(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("LLM=scripted\nTWILIO_AUTH_TOKN=abc\n")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "AWS_EC2_METADATA_DISABLED": "true",
           "PYTHONPATH": str(ROOT)}                      # this checkout's voiceagent
    done = subprocess.run([sys.executable, "-m", "voiceagent", "serve"], env=env,
                          cwd=str(tmp_path), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert "did you mean TWILIO_AUTH_TOKEN?" in lines[0], done.stderr
    assert "TWILIO_AUTH_TOKEN: required" in done.stderr
    assert "Traceback" not in done.stderr
