"""``voiceagent check`` skips STS for DynamoDB Local (whose dummy keys STS would refuse) by the
endpoint botocore resolves for the DynamoDB client, not by AWS_ENDPOINT_URL* alone: a DynamoDB
endpoint set in the AWS config file (a ``services`` section, or ``endpoint_url`` for every
service) made the check ask AWS's STS with DynamoDB Local's keys, a failure for a set-up that
works. Any request meant for AWS goes to a listener of ours on 127.0.0.1 (HTTPS_PROXY), which
counts it and hangs up, so nothing leaves the machine and the test sees it was made."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import trio

from tests.check_support import RUN_TIMEOUT_S, base_env, run_check
from tests.dynamodb_support import REGION, moto_endpoint, table_name

__all__ = ["moto_endpoint"]          # the fixture, imported so pytest finds it here

pytestmark = pytest.mark.timeout(90)


async def _count_and_hang_up(stream: trio.SocketStream, seen: list[str]) -> None:
    seen.append("connection")
    await stream.aclose()


def _config(moto: str, case: str) -> str:
    localhost = moto.replace("127.0.0.1", "localhost")      # the same moto, another URL
    if case == "endpoint_url":
        return f"[default]\nregion = {REGION}\nendpoint_url = {moto}\n"
    sts = f"sts =\n  endpoint_url = {localhost}\n" if case == "sts of its own" else ""
    return (f"[default]\nregion = {REGION}\nservices = local\n\n[services local]\n"
            f"dynamodb =\n  endpoint_url = {moto}\n{sts}")


@pytest.mark.parametrize("case", ["services section", "endpoint_url", "sts of its own"])
async def test_dynamodb_local_set_in_the_aws_config_file_needs_no_aws_identity(
        moto_endpoint: str, tmp_path: Path, case: str) -> None:
    config = tmp_path / "aws-config"
    config.write_text(_config(moto_endpoint, case))
    name = table_name()
    seen: list[str] = []
    with trio.fail_after(RUN_TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(
                trio.serve_tcp, partial(_count_and_hang_up, seen=seen), 0, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            env = base_env(tmp_path, STORE="dynamodb", LLM="scripted", TABLE_NAME=name,
                           AWS_ACCESS_KEY_ID="dummy", AWS_SECRET_ACCESS_KEY="dummy",
                           AWS_CONFIG_FILE=str(config), HTTPS_PROXY=f"http://127.0.0.1:{port}",
                           HTTP_PROXY=f"http://127.0.0.1:{port}",
                           NO_PROXY="127.0.0.1,localhost")
            run = await run_check(env, tmp_path)
            nursery.cancel_scope.cancel()
    lines = run.lines
    assert seen == [], run.out          # nothing was sent towards AWS
    # the store went where botocore resolved: moto, which has no such table
    assert lines[f"DynamoDB table {name}"].detail == f"does not exist at {moto_endpoint}", \
        run.out
    identity = lines["AWS credentials"]
    if case == "sts of its own":        # an STS endpoint set on purpose is asked
        assert identity.status == "pass", run.out
        assert identity.detail.startswith("account 123456789012, "), run.out
    else:
        assert (identity.status, identity.detail) == (
            "skip", f"skipped (LLM=scripted, and DynamoDB is at {moto_endpoint}, not AWS)"), \
            run.out
