"""A DynamoDB endpoint nobody answers at (DynamoDB Local not started yet, a mistyped
AWS_ENDPOINT_URL_DYNAMODB): the store commands and ``serve`` stop with one line that says
where to look, not only botocore's "Could not connect to the endpoint URL".

The endpoint is a port on 127.0.0.1 that this test holds bound and never listens on, so every
connection to it is refused at once.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.alarm_limit import alarm_limit
from tests.dynamodb_support import aws_env, isolate_env
from voiceagent.app.cli import main

TEST_LIMIT_S = 30.0


@pytest.fixture(autouse=True)
def _time_limit() -> Iterator[None]:
    with alarm_limit(TEST_LIMIT_S):      # sync: ``main`` runs its own ``trio.run``
        yield


@pytest.fixture
def refused_endpoint() -> Iterator[str]:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{held.getsockname()[1]}"


@pytest.mark.parametrize("argv", [["store", "init"], ["config", "list"], ["calls", "list"]])
def test_a_store_command_says_where_to_look_when_dynamodb_does_not_answer(
        argv: list[str], refused_endpoint: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    isolate_env(monkeypatch, {**aws_env(refused_endpoint, tmp_path), "STORE": "dynamodb",
                              "TABLE_NAME": "voiceagent-local"})
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert f"cannot reach {refused_endpoint}" in err
    assert "AWS_ENDPOINT_URL_DYNAMODB" in err
