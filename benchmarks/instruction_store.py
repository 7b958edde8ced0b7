"""``bench_instructions.py --store dynamodb``: the turn's store is DynamoDB on moto's server,
as ``bench_latency.py --shape gate`` runs it (``local_stack.py``), so the write-behind's
path (our HTTP client, SigV4 signing, the JSON request) is counted with the turn.

The parent starts moto (a process of its own, not under callgrind), makes the table and
loads the workload's use case with the operator's commands (``voiceagent store init``,
``voiceagent config load``); the child, whose harness writes sqlite settings, gets the table
through ``Settings.from_env``, the one place every settings object is made.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from local_stack import aws_env, run_cli

ROOT = Path(__file__).resolve().parent.parent
TABLE = "voiceagent-bench-instructions"
ENDPOINT_VARIABLE = "BENCH_INSTRUCTIONS_DYNAMODB"      # the child's cue: moto's URL


@contextmanager
def dynamodb(scratch: Path, *, kept_alive: bool = True) -> Iterator[dict[str, str]]:
    """moto with the table and the use case in it, stopped on exit; yields what the child's
    environment needs on top of the parent's. ``kept_alive``: served with kept-alive
    connections, as DynamoDB and the benchmarks' stack (``local_stack.py``) keep them; else
    ``python -m moto.server``, a connection per request."""
    from bench_token_calls import USE_CASE

    from tests.dynamodb_support import MotoServer
    from tests.server_harness import one_use_case_config

    scratch = Path(tempfile.mkdtemp(prefix="dynamodb-", dir=scratch))   # --keep: a fresh one
    moto = MotoServer(scratch / "moto.log", kept_alive=kept_alive).start()
    try:
        env = {**os.environ, **aws_env(scratch), "PYTHONPATH": str(ROOT), "STORE": "dynamodb",
               "TABLE_NAME": TABLE, "AWS_ENDPOINT_URL_DYNAMODB": moto.endpoint}
        config = one_use_case_config(scratch, USE_CASE)
        for command in (["store", "init"], ["config", "load", "--config-dir", str(config)]):
            run_cli(command, env)
        yield {ENDPOINT_VARIABLE: moto.endpoint}
    finally:
        moto.stop()


def use_dynamodb_in_child() -> None:
    """In the child, when the parent started moto: every settings object names the table,
    and the endpoint is put back after the harness clears the AWS variables."""
    endpoint = os.environ.get(ENDPOINT_VARIABLE)
    if not endpoint:
        return
    from voiceagent.settings import Settings

    made = Settings.from_env.__func__  # type: ignore[attr-defined]

    def from_env(cls: type[Settings], values: Any = None, *args: Any, **kwargs: Any) -> Any:
        os.environ["AWS_ENDPOINT_URL_DYNAMODB"] = endpoint
        if values is not None:
            values = {**values, "STORE": "dynamodb", "TABLE_NAME": TABLE}
        return made(cls, values, *args, **kwargs)

    Settings.from_env = classmethod(from_env)  # type: ignore[assignment,method-assign]
