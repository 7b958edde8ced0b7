"""DynamoDB for tests: moto's server mode in a subprocess on 127.0.0.1, and tables on it.

A subprocess rather than ``ThreadedMotoServer``: it does not share the tests' GIL, and it can
be stopped and started again on the same port (the fault tests). ``python -m moto.server``
closes the connection after every answer (werkzeug's development server), which the tests
keep: they exercise the connect-per-request path. ``kept_alive=True`` serves the same moto
with kept-alive connections, as DynamoDB does (``tests/moto_kept_alive.py``): the benchmarks'
stand-in. moto keeps its tables in
memory, so a restart is an empty DynamoDB. Every server is stopped by the test that started
it, or at the end of the session for the shared one.

boto3 finds the server through ``AWS_ENDPOINT_URL_DYNAMODB`` with dummy credentials; the
developer's AWS files are replaced by paths that do not exist (``aws_env``).
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import boto3
import pytest
import trio
from botocore.config import Config

from voiceagent.store.dynamodb import DynamoDBStore

REGION = "us-east-1"
START_TIMEOUT_S = 15.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


KEPT_ALIVE_SCRIPT = Path(__file__).with_name("moto_kept_alive.py")


class MotoServer:
    """``python -m moto.server`` on 127.0.0.1 (or, ``kept_alive``, moto under hypercorn);
    ``stop`` and ``start`` keep the port."""

    def __init__(self, log_path: Path, port: int | None = None, *,
                 kept_alive: bool = False) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        self.kept_alive = kept_alive
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> MotoServer:
        if self._process is not None:
            raise RuntimeError("moto server already running")
        command = ([str(KEPT_ALIVE_SCRIPT), "-p", str(self.port)] if self.kept_alive
                   else ["-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)])
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen([sys.executable, *command],
                                             stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"moto server exited: see {self.log_path}")
            try:
                with urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=1):
                    return self
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"moto server did not answer within {START_TIMEOUT_S} s")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


_shared: MotoServer | None = None


def shared_moto() -> MotoServer:
    """One moto server for every test that only needs tables (started on first use)."""
    global _shared
    if _shared is None:
        log_path = Path(tempfile.gettempdir()) / f"voiceagent-tests-moto-{os.getpid()}.log"
        _shared = MotoServer(log_path).start()
    return _shared


def stop_shared_moto() -> None:
    global _shared
    if _shared is not None:
        _shared.stop()
        _shared.log_path.unlink(missing_ok=True)
        _shared = None


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """The shared server's URL; stopped when the session ends."""
    yield shared_moto().endpoint
    stop_shared_moto()


def aws_env(endpoint: str, tmp_path: Path) -> dict[str, str]:
    """What boto3 needs to find moto, and nothing of the developer's AWS set-up."""
    return {
        "AWS_ENDPOINT_URL_DYNAMODB": endpoint, "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION, "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def isolate_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    """The process environment for in-process commands: the developer's AWS, Twilio and
    voiceagent variables removed, then ``env`` set."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "TWILIO_")) or name in (
                "STORE", "LLM", "DEMO", "VALIDATE_SIGNATURES", "TABLE_NAME", "PORT", "HOST",
                "DATA_DIR", "CONFIG_DIR", "STACK_USE_CASE", "PUBLIC_URL", "WS_URL",
                "TIME_ZONE", "LOG_FORMAT", "LOG_LEVEL", "LOG_CONTENT"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def raw_client(endpoint: str) -> Any:
    """A plain boto3 client for the test's own look at the table (no voiceagent code)."""
    return boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing",
        region_name=REGION).client("dynamodb", endpoint_url=endpoint,
                                   config=Config(retries={"total_max_attempts": 1}))


def table_name() -> str:
    return f"voiceagent-test-{secrets.token_hex(4)}"


@asynccontextmanager
async def open_test_table(endpoint: str, *, name: str | None = None,
                          limiter: trio.CapacityLimiter | None = None
                          ) -> AsyncIterator[DynamoDBStore]:
    """A fresh table made by ``store init``'s code path, deleted afterwards."""
    limiter = limiter or trio.CapacityLimiter(8)
    client = raw_client(endpoint)
    store = DynamoDBStore(name or table_name(), client, limiter=limiter)
    try:
        with trio.fail_after(20):
            await store.ensure_table()
        yield store
    finally:
        with trio.move_on_after(10, shield=True):
            await trio.to_thread.run_sync(
                lambda: client.delete_table(TableName=store.table_name))
        await store.aclose()
