"""``voiceagent check`` on the DynamoDB table: one missing or keyed other than the service keys
it, and a stored use case naming a tool this process lacks, each fail with what to do."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from tests.check_support import RUN_TIMEOUT_S, base_env, moto_env, run_check
from tests.dynamodb_support import moto_endpoint, open_test_table, raw_client, table_name
from voiceagent.store import config_records
from voiceagent.usecases import UseCase

__all__ = ["moto_endpoint"]          # the fixture, imported so pytest finds it here

pytestmark = pytest.mark.timeout(90)


# ---------------------------------------------------------------------------- the table

@pytest.mark.parametrize("case", ["missing", "wrong keys"])
async def test_a_missing_or_wrongly_keyed_table_fails_with_advice(
        moto_endpoint: str, tmp_path: Path, case: str) -> None:
    name = table_name()
    client = raw_client(moto_endpoint)
    if case == "wrong keys":
        await trio.to_thread.run_sync(lambda: client.create_table(
            TableName=name, BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}]))
    env = base_env(tmp_path, STORE="dynamodb", TABLE_NAME=name, LLM="scripted",
                   **moto_env(moto_endpoint, tmp_path))
    try:
        with trio.fail_after(RUN_TIMEOUT_S):
            run = await run_check(env, tmp_path)
    finally:
        if case == "wrong keys":
            await trio.to_thread.run_sync(lambda: client.delete_table(TableName=name))
    table = run.lines[f"DynamoDB table {name}"]
    assert run.code == 1
    assert run.lines["AWS credentials"].status == "pass"      # independent: still checked
    assert table.status == "fail"
    if case == "missing":
        assert table.detail == f"does not exist at {moto_endpoint}"
        assert table.advice[0] == "create it with `voiceagent store init` (same settings)"
        assert "DynamoDB console > Tables (region us-east-1)" in table.advice[1]
    else:
        assert table.detail == "exists, but is not keyed the way voiceagent needs"
        assert "key schema is id/None, expected pk/sk" in table.advice
        assert any(a.startswith("no global secondary index 'index-1-full'")
                   for a in table.advice)


async def test_a_stored_use_case_naming_a_tool_this_process_lacks_fails(
        moto_endpoint: str, tmp_path: Path) -> None:
    """config/ gained a tool and was loaded into the table, but the image was not rebuilt:
    every call of that use case would fail on the tool, and the checks said all was well."""
    use_case = UseCase.model_validate({"name": "frontDesk", "prompt": "Hi.", "tools": [
        {"name": "bookTable", "description": "Book a table."}]})
    with trio.fail_after(RUN_TIMEOUT_S):
        async with open_test_table(moto_endpoint, name=table_name()) as store:
            await store.put(config_records.use_case_item(use_case))
            env = base_env(tmp_path, STORE="dynamodb", TABLE_NAME=store.table_name,
                           LLM="scripted", STACK_USE_CASE="frontDesk",
                           **moto_env(moto_endpoint, tmp_path))
            run = await run_check(env, tmp_path)
    tools = run.lines["use cases and tools"]
    assert run.code == 1, run.out
    assert run.lines[f"DynamoDB table {store.table_name}"].status == "pass"
    assert (tools.status, tools.detail) == (
        "fail", "1 use case(s) in the table do not fit the tools this process registers")
    assert tools.advice[0].startswith(
        "use case frontDesk: tools[0].name: no tool 'bookTable' is registered")
