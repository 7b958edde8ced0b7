"""Without PUBLIC_URL a signature is checked against the URL built from each request (its
Host header, this server's http://), right only for a client calling this address itself:
behind a tunnel or load balancer every call was refused (403) by a server that had started
without a word. On ECS, always behind a load balancer, ``serve`` now refuses to start without
it (a deploy fails its start, not every call); elsewhere it says at start which URL it will
check, and why that is risky."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import trio

from tests.serve_process import serve_process
from voiceagent.app import unset_public_url
from voiceagent.settings import Settings

WARNING = "PUBLIC_URL is not set: signatures are checked against each request's own address"


@pytest.mark.timeout(60)
def test_serve_on_ecs_without_public_url_refuses_to_start(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LLM": "scripted",
           "TWILIO_AUTH_TOKEN": "not-secret", "HOST": "127.0.0.1", "PORT": "0",
           # never asked: the settings stop it first
           "ECS_AGENT_URI": "http://127.0.0.1:9/api/0123456789abcdef-3814",
           "PYTHONPATH": str(Path(__file__).parent.parent)}     # this checkout's code
    done = subprocess.run([sys.executable, "-m", "voiceagent", "serve"], env=env,
                          cwd=str(tmp_path), capture_output=True, text=True, timeout=40)
    assert done.returncode == 2, done.stderr
    assert "cannot start, 1 setting(s) to fix" in done.stderr
    assert "PUBLIC_URL: required on ECS (ECS_AGENT_URI is set)" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("extra", [
    {"PUBLIC_URL": "https://agent.example.com"},    # what the SAM template sets
    {"VALIDATE_SIGNATURES": "false"},               # nothing signed to check
    {"ECS_AGENT_URI": ""},                          # not on ECS: a warning only
])
def test_the_refusal_is_for_ecs_with_signatures_checked_and_no_public_url(
        extra: dict[str, str]) -> None:
    settings = Settings.from_env({"LLM": "scripted", "TWILIO_AUTH_TOKEN": "not-secret",
                                  "ECS_AGENT_URI": "http://169.254.170.2/api/task",
                                  **extra})
    assert unset_public_url.problem(settings) is None


@pytest.mark.parametrize(("env", "checked_url"), [
    ({}, "http://<the request's Host header>/twiml"),
    ({"TRUST_PROXY_HEADERS": "true"},
     "<X-Forwarded-Proto>://<X-Forwarded-Host, else Host>/twiml"),
    ({"PUBLIC_URL": "https://agent.example.com"}, None),
    # a second worker of the image's entrypoint: worker 0 says it for the server
    ({"WORKERS": "2", "WORKER_INDEX": "1"}, None),
])
@pytest.mark.timeout(60)
async def test_serve_says_at_start_which_url_it_checks_without_public_url(
        tmp_path: Path, env: dict[str, str], checked_url: str | None) -> None:
    with trio.fail_after(45):
        async with serve_process(tmp_path, **env) as server:     # started: it is listening
            said = [entry for entry in server.events if entry.get("event") == WARNING]
    if checked_url is None:
        assert said == []
        return
    assert len(said) == 1, said
    assert said[0]["level"] == "warning"
    assert said[0]["checked_url"] == checked_url
    assert "PUBLIC_URL" in said[0]["fix"]
    assert ("403" if not env else "X-Forwarded-Host") in said[0]["risk"]


def test_the_warning_is_said_once_per_server_by_worker_0() -> None:
    """With WORKERS > 1 every process of the entrypoint logged it: one unset setting read as
    a warning per CPU. Worker 0 (and a lone process, which has no number) says it."""
    said = [unset_public_url.warning(Settings.from_env(
        {"LLM": "scripted", "TWILIO_AUTH_TOKEN": "not-secret", **workers}))
        for workers in ({}, {"WORKERS": "3", "WORKER_INDEX": "0"},
                        {"WORKERS": "3", "WORKER_INDEX": "1"},
                        {"WORKERS": "3", "WORKER_INDEX": "2"})]
    assert [fields is not None for fields in said] == [True, True, False, False]
