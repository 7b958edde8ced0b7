"""The machine the latency benchmarks load: local DynamoDB, local Bedrock, and the server.

Each part is its own process on 127.0.0.1, as in production each is its own service:

* DynamoDB: moto, the table made by ``voiceagent store init`` and the benchmark use case
  written by ``voiceagent config load``, as an operator would. moto is served with kept-alive
  connections, as DynamoDB keeps them (``tests/moto_kept_alive.py``: hypercorn), so our store
  reuses them as in production; ``--moto werkzeug`` (or ``BENCH_MOTO=werkzeug``) gives back
  ``python -m moto.server``, which closes every connection after one answer and starts a
  thread per connection: every write then pays a connect here and an accept and a thread
  start in moto (issue 20);
* Bedrock: the fake ConverseStream endpoint (``python -m tests.fake_bedrock --scripted``),
  answering with the benchmark use case's scripted replies at the pace given (first-token
  delay, then one word per delta), so the server's real Bedrock backend parses real frames;
* the server: ``voiceagent serve`` workers on one port (REUSE_PORT, one process per core as
  the container runs them).

``--llm scripted`` and ``--store sqlite`` swap in the embedded defaults instead (the model then
paces itself inside the server, and its timers count as the server's CPU).

``--tls``: the endpoint speaks TLS with a private CA. Its URL names ``localhost`` (a host name
to resolve, as Bedrock's is) unless ``BENCH_TLS_HOST`` says otherwise (``127.0.0.1``: no name
resolution on the path; the certificate is valid for both).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import server_process

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "benchmarks" / "config"
TOKEN = "bench-token-not-secret"
START_TIMEOUT_S = 30.0


TLS_HOST = os.environ.get("BENCH_TLS_HOST", "localhost")   # the certificate names both
MOTO_SERVERS = ("kept-alive", "werkzeug")
MOTO = os.environ.get("BENCH_MOTO", MOTO_SERVERS[0])
if MOTO not in MOTO_SERVERS:
    raise SystemExit(f"BENCH_MOTO={MOTO!r}: use one of {', '.join(MOTO_SERVERS)}")


@dataclass(frozen=True)
class StackOptions:
    llm: str = "bedrock"                # bedrock: the local endpoint | scripted: in the server
    store: str = "dynamodb"             # dynamodb: moto's server | sqlite: a file
    first_token_ms: float = 200.0       # the model's time to first token
    token_ms: float = 25.0              # between tokens (40 tokens/s)
    reply_times: int = 1                # each scripted reply said this many times over
    tls: bool = False                   # the endpoint speaks TLS (a private CA)
    moto: str = MOTO                    # kept-alive: moto under hypercorn | werkzeug: its own

    def describe(self) -> str:
        model = ("local Bedrock endpoint (ConverseStream wire format)" if self.llm == "bedrock"
                 else "scripted model in the server")
        store = (f"local DynamoDB ({MOTO_DESCRIPTIONS[self.moto]})" if self.store == "dynamodb"
                 else "SQLite file")
        if self.llm == "bedrock" and self.tls:
            model += " over TLS"
        return (f"{model}, first token {self.first_token_ms:g} ms, then a word every "
                f"{self.token_ms:g} ms; {store}")


MOTO_DESCRIPTIONS = {"kept-alive": "moto, kept-alive connections",
                     "werkzeug": "moto's werkzeug server, a connection per request"}


@dataclass
class Stack:
    options: StackOptions
    env: dict[str, str]                 # what a server process needs on top of os.environ
    helper_pids: dict[str, int] = field(default_factory=dict)   # "bedrock", "dynamodb"


def aws_env(scratch: Path) -> dict[str, str]:
    """Dummy credentials and no AWS files: nothing may reach AWS."""
    return {"AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_CONFIG_FILE": str(scratch / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(scratch / "no-aws-credentials"),
            "AWS_EC2_METADATA_DISABLED": "true"}


def _start_fake_bedrock(options: StackOptions, log: IO[bytes], ca_file: Path
                        ) -> tuple[subprocess.Popen[bytes], int]:
    port_file = Path(tempfile.mkstemp(prefix="fake-bedrock-port-")[1])
    tls = ["--tls", str(ca_file)] if options.tls else []
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.fake_bedrock", "--port-file", str(port_file),
             "--scripted", str(CONFIG), "--first-token-ms", str(options.first_token_ms),
             "--token-ms", str(options.token_ms), "--reply-times", str(options.reply_times),
             *tls],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
        port = server_process.wait_for(lambda: port_file.read_text().strip(), process,
                                       START_TIMEOUT_S, "the local Bedrock endpoint")
        return process, int(port)
    finally:
        port_file.unlink(missing_ok=True)


def run_cli(args: list[str], env: dict[str, str]) -> None:
    """``voiceagent ARGS`` as an operator runs it, here; exits the benchmark on failure."""
    done = subprocess.run([sys.executable, "-m", "voiceagent", *args], cwd=ROOT,
                          env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise SystemExit(f"voiceagent {' '.join(args)} failed:\n{done.stderr.strip()}")


@contextmanager
def local_stack(options: StackOptions, scratch: Path, name: str = "bench") -> Iterator[Stack]:
    """The model and the store for one load level, started fresh and stopped on exit; the
    servers are started by the caller with ``stack.env``."""
    scratch.mkdir(parents=True, exist_ok=True)
    env = {"CONFIG_DIR": str(CONFIG), "STACK_USE_CASE": "benchUseCase",
           "TWILIO_AUTH_TOKEN": TOKEN, **aws_env(scratch)}
    stack = Stack(options, env)
    with ExitStack() as cleanup:
        log = cleanup.enter_context((scratch / f"{name}-helpers.log").open("ab"))
        if options.llm == "bedrock":
            ca_file = scratch / f"{name}-bedrock-ca.pem"
            bedrock, port = _start_fake_bedrock(options, log, ca_file)
            cleanup.callback(server_process.stop, bedrock)
            env.update({"LLM": "bedrock", "AWS_ENDPOINT_URL_BEDROCK_RUNTIME":
                        f"http://127.0.0.1:{port}"})
            if options.tls:
                env.update({"AWS_ENDPOINT_URL_BEDROCK_RUNTIME": f"https://{TLS_HOST}:{port}",
                            "AWS_CA_BUNDLE": str(ca_file)})
            stack.helper_pids["bedrock"] = bedrock.pid
        else:
            env.update({"LLM": "scripted",
                        "SCRIPTED_FIRST_TOKEN_DELAY_MS": str(round(options.first_token_ms)),
                        "SCRIPTED_TOKEN_DELAY_MS": str(round(options.token_ms))})
        if options.store == "dynamodb":
            from tests.dynamodb_support import MotoServer
            moto = MotoServer(scratch / f"{name}-moto.log",
                              kept_alive=options.moto == "kept-alive").start()
            cleanup.callback(moto.stop)
            env.update({"STORE": "dynamodb", "TABLE_NAME": "voiceagent-bench",
                        "AWS_ENDPOINT_URL_DYNAMODB": moto.endpoint})
            if moto.pid is not None:
                stack.helper_pids["dynamodb"] = moto.pid
            run_cli(["store", "init"], env)
            run_cli(["config", "load", "--config-dir", str(CONFIG)], env)
        else:
            env.update({"STORE": "sqlite", "DATA_DIR": str(scratch / f"{name}-data")})
        yield stack
