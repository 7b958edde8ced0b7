"""Fixtures shared by several test modules."""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

from tests.fake_bedrock import FakeBedrock, fake_bedrock_env, running_fake_bedrock
from tests.wheelhouse import (
    Wheelhouse,
    WheelhouseUnusable,
    WheelVenv,
    make_wheel_venv,
    open_wheelhouse,
)
from voiceagent.logs import _ContextFilter

# Tests are deterministic: each property test draws the same examples on every run (its seed
# comes from the test), and no example fails for being slow on a loaded machine; a play
# source with a lone surrogate, drawn once in a while, failed a CI run at random.
# HYPOTHESIS_PROFILE=explore draws new examples while working on a property.
hypothesis_settings.register_profile("deterministic", derandomize=True, deadline=None,
                                     database=None)
hypothesis_settings.register_profile("explore", deadline=None)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Dummy credentials only: nothing from the developer's environment or ~/.aws."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-secret")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
async def fake_bedrock(aws_env: None, monkeypatch: pytest.MonkeyPatch
                       ) -> AsyncIterator[FakeBedrock]:
    """The local ConverseStream endpoint over plain HTTP, boto3's Bedrock endpoint pointed at
    it (a module that needs TLS, a proxy or other credentials makes its own)."""
    async with running_fake_bedrock() as server:
        monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", server.endpoint_url)
        yield server


@pytest.fixture
async def fake_bedrock_tls(aws_env: None, monkeypatch: pytest.MonkeyPatch,
                           tmp_path: Path) -> AsyncIterator[FakeBedrock]:
    """The local ConverseStream endpoint over TLS with the private CA, everything boto3 and
    our client need to reach it set in the environment (``fake_bedrock_env``)."""
    async with running_fake_bedrock(tls=True) as server:
        for name, value in fake_bedrock_env(server, tmp_path).items():
            monkeypatch.setenv(name, value)
        yield server


@pytest.fixture
def records() -> Iterator[list[logging.LogRecord]]:
    """Every record at INFO and above (the default level), after our context filter ran."""
    kept: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            kept.append(record)

    handler = Collect(level=logging.INFO)
    handler.addFilter(_ContextFilter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield kept
    root.removeHandler(handler)
    root.setLevel(old_level)


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Wheelhouse:
    """Every wheel installing voiceagent needs, from .wheelhouse/ (filled at install time by
    `python -m tests.wheelhouse fill`), and voiceagent's wheel built from this checkout;
    installs from it run offline (tests/wheelhouse.py)."""
    try:
        return open_wheelhouse(tmp_path_factory.mktemp("wheel"))
    except WheelhouseUnusable as err:
        problem = str(err)
    pytest.fail(problem, pytrace=False)


@pytest.fixture(scope="session")
def user_venv(tmp_path_factory: pytest.TempPathFactory, wheelhouse: Wheelhouse) -> WheelVenv:
    """A folder whose .venv has voiceagent installed from its wheel, as a user would have it,
    with pytest and pytest-trio: one per session, shared by the scaffold and tutorial tests."""
    return make_wheel_venv(tmp_path_factory.mktemp("user"), wheelhouse)


# pytest-trio hands trio.run the clock found among the *test's* own arguments: a MockClock that
# only a fixture asks for is set up and ignored, and the test runs on the real clock while its
# docstring, its fixture and its timings all say virtual time (eleven Bedrock tests had gone
# that way). A test whose fixtures use a clock must name it too.
VIRTUAL_CLOCKS = ("mock_clock", "autojump_clock")


def pytest_runtest_setup(item: pytest.Item) -> None:
    function = getattr(item, "obj", None)
    if not isinstance(item, pytest.Function) or function is None:
        return
    own = set(inspect.signature(function).parameters)
    for name in VIRTUAL_CLOCKS:
        if name in item.fixturenames and name not in own:
            pytest.fail(f"a fixture of this test uses `{name}`, the test does not: pytest-trio "
                        f"would run it on the real clock; add `{name}: "
                        f"trio.testing.MockClock` to the test's arguments", pytrace=False)
