"""``voiceagent config``, ``calls`` and ``store init``, run as a user runs them: ``main([...])``
in-process (it calls ``trio.run``, so these tests are sync), settings from the environment
(monkeypatched: nothing of the developer's), output read with capsys. DynamoDB is the shared
moto server with a table per test; SQLite a file under tmp_path.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import yaml
from boto3.dynamodb.types import TypeSerializer

import voiceagent.store.records as records
from tests.alarm_limit import alarm_limit
from tests.dynamodb_support import aws_env, isolate_env, moto_endpoint, raw_client, table_name
from tests.server_harness import AUTH_TOKEN, make_settings, running_server
from voiceagent.app import transcripts
from voiceagent.app.caller import Identity, open_call
from voiceagent.app.cli import main
from voiceagent.catalog import read_config_dir
from voiceagent.store.dynamodb import DynamoDBStore
from voiceagent.store.dynamodb_table import table_definition
from voiceagent.store.sqlite import open_sqlite_store
from voiceagent.tools.registry import default_registry

__all__ = ["moto_endpoint"]          # the fixture, imported so pytest finds it here
# the commands are synchronous and talk to moto over HTTP: no trio scope can bound them
pytestmark = pytest.mark.timeout(60)

TESTS = Path(__file__).parent
ROOT = Path(__file__).resolve().parent.parent
FIXTURE_CONFIG = TESTS / "fixtures" / "config"
SAMPLE = TESTS / "fixtures" / "original-sample"
REPO_CONFIG = TESTS.parent / "config"
CALL_SID = "CA" + "a" * 32
EPOCH_S = 1_750_000_000              # 2025-06-15 15:06:40 UTC
TEST_LIMIT_S = 30.0
TTL_S = 50 * 365 * 86_400           # the SQLite store removes expired items when it opens


@pytest.fixture(autouse=True)
def _time_limit() -> Iterator[None]:
    with alarm_limit(TEST_LIMIT_S):      # sync: ``main`` runs its own ``trio.run``
        yield


@pytest.fixture(autouse=True)
def _elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The commands read ./.env and ./config: run them where neither is the developer's."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def dynamodb_env(moto_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                 ) -> Iterator[str]:
    """STORE=dynamodb on a table name of its own (created by the test); deleted afterwards."""
    name = table_name()
    isolate_env(monkeypatch, {**aws_env(moto_endpoint, tmp_path), "STORE": "dynamodb",
                              "TABLE_NAME": name, "CONFIG_DIR": str(FIXTURE_CONFIG)})
    yield name
    client = raw_client(moto_endpoint)
    for table in client.list_tables()["TableNames"]:
        if table.startswith(name):
            client.delete_table(TableName=table)


@pytest.fixture
def sqlite_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    data_dir = tmp_path / "data"
    isolate_env(monkeypatch, {"STORE": "sqlite", "DATA_DIR": str(data_dir),
                              "CONFIG_DIR": str(FIXTURE_CONFIG),
                              "AWS_CONFIG_FILE": str(tmp_path / "none"),
                              "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")})
    return data_dir


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> list[str]:
    """``voiceagent ARGV`` succeeds; its stdout lines."""
    assert main(list(argv)) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return out.splitlines()


def fail(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """``voiceagent ARGV`` exits 2 with a message and no traceback; its stderr."""
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


# ------------------------------------------------------------------ store init


def test_store_init_creates_the_table_once(dynamodb_env: str, moto_endpoint: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    first = run(capsys, "store", "init")
    assert first[0].startswith(f"created table {dynamodb_env} (pk/sk strings, GSI index-1-full")
    assert first[1:] == ["enabled TTL on expireAt",
                         f"dynamodb:{dynamodb_env} at {moto_endpoint} is ready"]
    assert run(capsys, "store", "init") == [
        f"table {dynamodb_env} already exists with the expected schema",
        f"dynamodb:{dynamodb_env} at {moto_endpoint} is ready"]
    client = raw_client(moto_endpoint)
    table = client.describe_table(TableName=dynamodb_env)["Table"]
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    assert {k["AttributeName"]: k["KeyType"] for k in table["KeySchema"]} == {
        "pk": "HASH", "sk": "RANGE"}
    (index,) = table["GlobalSecondaryIndexes"]
    assert index["IndexName"] == "index-1-full"
    assert index["Projection"] == {"ProjectionType": "ALL"}
    assert client.describe_time_to_live(TableName=dynamodb_env)["TimeToLiveDescription"] == {
        "TimeToLiveStatus": "ENABLED", "AttributeName": "expireAt"}


def test_store_init_names_what_differs_in_an_existing_table(
        dynamodb_env: str, moto_endpoint: str, capsys: pytest.CaptureFixture[str]) -> None:
    wrong = table_definition(dynamodb_env)
    wrong["AttributeDefinitions"] = [{"AttributeName": n, "AttributeType": t}
                                     for n, t in (("pk", "S"), ("sk", "N"), ("pk1", "S"),
                                                  ("sk1", "S"))]
    wrong["GlobalSecondaryIndexes"][0]["Projection"] = {"ProjectionType": "KEYS_ONLY"}
    raw_client(moto_endpoint).create_table(**wrong)
    error = fail(capsys, "store", "init")
    assert error.count("\n") == 1
    assert f"DynamoDB table '{dynamodb_env}' exists" in error
    assert "index index-1-full projects KEYS_ONLY, expected ALL" in error
    assert "attribute sk has type N, expected S (string)" in error


def test_sqlite_store_init_creates_the_file(sqlite_env: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "store", "init") == [
        f"sqlite:{sqlite_env / 'voiceagent.db'} is ready (SQLite creates its file and schema "
        "on first use)"]
    assert (sqlite_env / "voiceagent.db").is_file()


# ------------------------------------------------------------------ config


def test_config_load_says_what_changed_and_is_idempotent(
        dynamodb_env: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    run(capsys, "store", "init")
    assert run(capsys, "config", "load") == [
        "use case testUseCase: created", "profile +1555***0111: created",
        f"2 items in dynamodb:{dynamodb_env}: 2 created, 0 updated, 0 unchanged"]
    assert run(capsys, "config", "load")[-1] == (
        f"2 items in dynamodb:{dynamodb_env}: 0 created, 0 updated, 2 unchanged")

    edited = tmp_path / "edited"
    shutil.copytree(FIXTURE_CONFIG, edited)
    path = edited / "usecases" / "testUseCase.yaml"
    path.write_text(path.read_text().replace("title: Test Pizza", "title: Test Pizzeria"))
    (edited / "profiles.yaml").write_text("profiles: []\n")
    assert run(capsys, "config", "load", "--config-dir", str(edited)) == [
        "use case testUseCase: updated",
        f"profile +1555***0111: kept (in the store, not in {edited})",
        f"1 items in dynamodb:{dynamodb_env}: 0 created, 1 updated, 0 unchanged"]


def test_config_load_errors_name_the_file_and_key_path(
        sqlite_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(FIXTURE_CONFIG, broken)
    path = broken / "usecases" / "testUseCase.yaml"
    path.write_text(path.read_text().replace("  - name: CheckRestaurantPickUpTime\n",
                                             "  - name: CheckRestaurantPickUpTime\n"
                                             "    inpt_schema: {}\n"))
    assert fail(capsys, "config", "load", "--config-dir", str(broken)) == (
        f"voiceagent: {path}: tools[0].inpt_schema: unknown key (did you mean input_schema? "
        "see config/README.md for the keys)\n")


@pytest.mark.parametrize("encoding", ["utf-16", "latin-1"])
def test_config_load_names_a_file_that_is_not_utf8(
        sqlite_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        encoding: str) -> None:
    """Notepad's "Unicode" (UTF-16) or a Latin-1 editor: the file and the fix, in one line."""
    config = tmp_path / "config"
    shutil.copytree(FIXTURE_CONFIG, config)
    path = config / "usecases" / "windows.yaml"
    path.write_bytes("name: caf\u00e9UseCase\nprompt: hi\n".encode(encoding))
    error = fail(capsys, "config", "load", "--config-dir", str(config))
    assert error.startswith(f"voiceagent: {path}: not UTF-8 text (byte ")
    assert error.endswith("is not UTF-8); save the file as UTF-8\n")
    path.unlink()
    (config / "profiles.yaml").write_bytes(
        (config / "profiles.yaml").read_text().replace("Ada", "Ad\u00e9").encode(encoding))
    assert f"{config / 'profiles.yaml'}: not UTF-8" in fail(
        capsys, "config", "load", "--config-dir", str(config))


def test_config_load_skips_hidden_files(sqlite_env: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """macOS writes binary ``._name.yaml`` (AppleDouble) files beside a use case copied to
    a volume without extended attributes; they are not use cases."""
    config = tmp_path / "config"
    shutil.copytree(FIXTURE_CONFIG, config)
    (config / "usecases" / "._testUseCase.yaml").write_bytes(
        b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        \xff\xfe")
    assert run(capsys, "config", "load", "--config-dir", str(config))[0] == (
        "use case testUseCase: created")


def test_config_commands_without_a_table_or_a_token_fail_in_one_line(
        dynamodb_env: str, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    error = fail(capsys, "config", "list")       # no TWILIO_AUTH_TOKEN is needed to get here
    assert f"table '{dynamodb_env}' does not exist" in error
    assert "voiceagent store init" in error
    monkeypatch.delenv("TABLE_NAME")
    assert "TABLE_NAME" in fail(capsys, "calls", "list")


def test_config_list_and_show(dynamodb_env: str, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "store", "init")
    run(capsys, "config", "load")
    assert run(capsys, "config", "list") == [
        "use case testUseCase: Test Pizza (1 tool, 1 key, default model)",
        "profile +1555***0111: Ada Lovelace, use case testUseCase"]
    shown = "\n".join(run(capsys, "config", "show", "testUseCase")) + "\n"
    assert shown.startswith("name: testUseCase\ntitle: Test Pizza\n")
    assert "prompt: |\n  You answer the phone for Test Pizza. <<USER_CONTEXT>>" in shown
    assert "relay:\n  dtmfDetection: true\n  interruptible: any\n" in shown
    assert fail(capsys, "config", "show", "nope") == (
        f"voiceagent: no use case 'nope' in dynamodb:{dynamodb_env}; there are: testUseCase\n")


def test_yaml_to_table_to_yaml_is_stable(dynamodb_env: str, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The repository's config/ (every kind of key): the export means what the source
    meant, and a second round gives the same bytes."""
    source = REPO_CONFIG
    rounds = [tmp_path / "first", tmp_path / "second"]
    loaded = source
    for number, out in enumerate(rounds):
        monkeypatch.setenv("TABLE_NAME", f"{dynamodb_env}-{number}")
        run(capsys, "store", "init")
        run(capsys, "config", "load", "--config-dir", str(loaded))
        written = run(capsys, "config", "export", "--out", str(out))
        assert written[-1].endswith(f"from dynamodb:{dynamodb_env}-{number}")
        loaded = out
    registry = default_registry()
    assert read_config_dir(rounds[0], registry) == read_config_dir(source, registry)
    files = sorted(p.relative_to(rounds[0]) for p in rounds[0].rglob("*.yaml"))
    assert files == sorted(p.relative_to(rounds[1]) for p in rounds[1].rglob("*.yaml"))
    assert len(files) == len(list(source.rglob("*.yaml")))
    for relative in files:
        assert (rounds[0] / relative).read_bytes() == (rounds[1] / relative).read_bytes()


def test_loading_an_export_back_changes_nothing(sqlite_env: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """The export sorts a schema's keys (a DynamoDB map keeps no order): loading it back
    reported every use case with a tool as "updated", and so did the source after it."""
    run(capsys, "config", "load", "--config-dir", str(REPO_CONFIG))
    run(capsys, "config", "export", "--out", str(tmp_path / "export"))
    for folder in (tmp_path / "export", REPO_CONFIG):
        lines = run(capsys, "config", "load", "--config-dir", str(folder))
        assert ": 0 created, 0 updated, " in lines[-1], lines
        assert not [line for line in lines if line.endswith(": updated")], lines


def _put_sample_items(endpoint: str, table: str) -> None:
    """The original sample's items, as its loaders wrote them (raw DynamoDB JSON)."""
    client = raw_client(endpoint)
    for name in ("restaurantOrderingUseCase", "albertEinsteinUseCase"):
        item = json.loads((SAMPLE / f"{name}.ddb.json").read_text(encoding="utf-8"))
        client.put_item(TableName=table, Item=item)
    profile = json.loads((SAMPLE / "user-profile-example.json").read_text(encoding="utf-8"))
    serializer = TypeSerializer()
    client.put_item(TableName=table,
                    Item={key: serializer.serialize(value) for key, value in profile.items()})


def test_original_sample_items_list_show_and_export(
        dynamodb_env: str, moto_endpoint: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "store", "init")
    _put_sample_items(moto_endpoint, dynamodb_env)
    assert run(capsys, "config", "list") == [
        "use case albertEinsteinUseCase: Albert Einstein Guide (1 tool, 10 keys, "
        "default model)",
        "use case restaurantOrderingUseCase: Restaurant Ordering (3 tools, 10 keys, "
        "default model)",
        "profile +1555***0100: Pat Example, use case restaurantOrderingUseCase"]
    shown = yaml.safe_load("\n".join(run(capsys, "config", "show",
                                         "restaurantOrderingUseCase")))
    assert shown["prompt"].startswith("Do NOT include <thinking></thinking> tags.")
    assert [tool["name"] for tool in shown["tools"]] == [
        "PlaceOrderFunction", "CheckRestaurantPickUpTime", "CheckRestaurantDeliveryTime"]
    assert shown["relay"]["welcomeGreeting"] == ("Thanks for calling Twilio Dough Boy Pizza! "
                                                 "How can I help you?")
    run(capsys, "config", "export", "--out", str(tmp_path / "out"))
    exported = read_config_dir(tmp_path / "out", default_registry())
    assert [u.name for u in exported.use_cases] == ["albertEinsteinUseCase",
                                                    "restaurantOrderingUseCase"]
    assert [p.phone for p in exported.profiles] == ["+15555550100"]


def test_config_export_to_a_folder_it_cannot_create_fails_in_one_line(
        sqlite_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "config", "load")
    (tmp_path / "taken").write_text("a file, not a folder\n")
    out = tmp_path / "taken" / "export"
    assert fail(capsys, "config", "export", "--out", str(out)) == (
        f"voiceagent: cannot write {out / 'usecases'}: Not a directory; choose another "
        "--out\n")


def test_config_export_does_not_replace_your_own_config_unless_forced(
        sqlite_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`config export --out config` silently rewrote the source files, their comments lost;
    an earlier export there is replaced as before."""
    run(capsys, "config", "load", "--config-dir", str(REPO_CONFIG))
    mine = tmp_path / "config"
    shutil.copytree(REPO_CONFIG, mine)
    before = {p: p.read_bytes() for p in mine.rglob("*.yaml")}
    refused = fail(capsys, "config", "export", "--out", str(mine))
    assert refused.startswith(f"voiceagent: {mine / 'usecases'}")
    assert refused.rstrip().endswith("Choose another --out, or pass --force")
    assert {p: p.read_bytes() for p in mine.rglob("*.yaml")} == before
    first = run(capsys, "config", "export", "--out", str(tmp_path / "export"))
    again = run(capsys, "config", "export", "--out", str(tmp_path / "export"))
    assert again == first                                   # an export's own files: replaced
    forced = run(capsys, "config", "export", "--out", str(mine), "--force")
    assert forced[0].startswith(f"wrote {mine}")
    assert all(p.read_text().startswith("# Exported by") for p in mine.rglob("*.yaml"))


# ------------------------------------------------------------------ calls


def _conversation() -> list[dict[str, Any]]:
    session = records.CallSession(
        call_sid=CALL_SID, token="t", use_case="testUseCase", system_prompt="Be brief.",
        model_id="us.amazon.nova-lite-v1:0", caller="+15555550100", called="+15555550199",
        profile=None, greeting="Hello, this is Test Pizza.", created_at=float(EPOCH_S))
    later = records.CallSession(
        call_sid="CA" + "b" * 32, token="t", use_case="otherUseCase", system_prompt="p",
        model_id="m", caller="+15555550123", called="+15555550199", profile=None,
        greeting=None, created_at=EPOCH_S + 3600.0)
    tool_use = {"toolUseId": "tooluse_1", "name": "CheckRestaurantPickUpTime",
                "input": {"order_type": "pickup"}}
    result = {"toolUseId": "tooluse_1", "status": "success",
              "content": [{"json": {"minutes": 15, "order_type": "pickup"}}]}
    messages: list[tuple[int, str, list[dict[str, Any]], dict[str, Any]]] = [
        (100, "assistant", [{"text": "Hello, this is Test Pizza."}], {"kind": "greeting"}),
        (2_000, "user", [{"text": "tell me a story"}], {}),
        (2_500, "assistant", [{"text": "Once upon a time"}],
         {"generated": "Once upon a time there was a pizza oven", "interrupted": True}),
        (4_000, "user", [{"text": "when can I\npick up?"}], {}),
        (4_200, "assistant", [{"text": "Let me check."}, {"toolUse": tool_use}], {}),
        (4_300, "user", [{"toolResult": result}], {}),
        (65_400, "assistant", [{"text": "It will be ready in 15 minutes."}], {}),
    ]
    items = [records.session_item(session, ttl_s=TTL_S),
             records.session_item(later, ttl_s=TTL_S)]
    items += [records.chat_item(CALL_SID, EPOCH_S * 1000 + at, seq,
                                {"role": role, "content": content}, meta, ttl_s=TTL_S)
              for seq, (at, role, content, meta) in enumerate(messages)]
    # a reply a later barge-in cut away after it was stored: its tombstone is no message
    items.append(records.chat_item(CALL_SID, EPOCH_S * 1000 + 65_500, len(messages), {},
                                   {"dropped": True}, ttl_s=TTL_S))
    return items


EXPECTED_TRANSCRIPT = [
    f"call {CALL_SID}",
    "  use case testUseCase, from +1555***0100 to +1555***0199, model us.amazon.nova-lite-v1:0",
    "  started 2025-06-15 15:06:40 UTC, 7 messages",
    "",
    " +0:00.10  agent   Hello, this is Test Pizza.",
    "                     welcome greeting (spoken by Twilio)",
    " +0:02.00  caller  tell me a story",
    " +0:02.50  agent   Once upon a time",
    "                     barge-in: the line above is what the caller heard",
    "                     generated: Once upon a time there was a pizza oven",
    " +0:04.00  caller  when can I pick up?",
    " +0:04.20  agent   Let me check.",
    ' +0:04.20  agent   -> CheckRestaurantPickUpTime {"order_type": "pickup"}',
    ' +0:04.30  tool    <- CheckRestaurantPickUpTime result: {"minutes": 15, '
    '"order_type": "pickup"}',
    " +1:05.40  agent   It will be ready in 15 minutes.",
]


def test_calls_list_and_show_from_dynamodb(dynamodb_env: str, moto_endpoint: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "store", "init")

    async def fill() -> None:
        store = DynamoDBStore(dynamodb_env, raw_client(moto_endpoint),
                              limiter=trio.CapacityLimiter(2))
        with trio.fail_after(10):
            await store.put_many(_conversation())
        await store.aclose()

    trio.run(fill)
    _assert_calls_output(capsys)


def test_calls_list_and_show_from_sqlite(sqlite_env: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    async def fill() -> None:
        async with open_sqlite_store(sqlite_env / "voiceagent.db",
                                     limiter=trio.CapacityLimiter(2)) as store:
            await store.put_many(_conversation())

    trio.run(fill)
    _assert_calls_output(capsys)


def test_reading_commands_leave_no_store_behind_where_there_is_none(
        sqlite_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Run in the wrong folder, they used to create an empty store and report it empty."""
    for argv in (("calls", "list"), ("calls", "show", CALL_SID), ("config", "list"),
                 ("config", "show", "testUseCase"), ("config", "export")):
        err = fail(capsys, *argv)
        assert f"no SQLite store at {sqlite_env / 'voiceagent.db'}" in err, argv
        assert "set DATA_DIR" in err
        assert "`voiceagent demo` keeps its calls in a temporary folder unless given " \
               "--data-dir .voiceagent" in " ".join(err.split())
    assert not sqlite_env.exists()
    assert not Path("config-export").exists()
    run(capsys, "store", "init")
    path = sqlite_env / "voiceagent.db"
    assert path.exists()
    assert run(capsys, "calls", "list") == [f"no calls in sqlite:{path}"]


def _assert_calls_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "calls", "list") == [
        "CALL SID                            STARTED                  USE CASE      CALLER"
        "        MESSAGES",
        "CA" + "b" * 32 + "  2025-06-15 16:06:40 UTC  otherUseCase  +1555***0123  0",
        "CA" + "a" * 32 + "  2025-06-15 15:06:40 UTC  testUseCase   +1555***0100  7"]
    assert run(capsys, "calls", "list", "--limit", "1")[1:] == [
        "CA" + "b" * 32 + "  2025-06-15 16:06:40 UTC  otherUseCase  +1555***0123  0"]
    assert run(capsys, "calls", "show", CALL_SID) == EXPECTED_TRANSCRIPT
    assert "no call CA" in fail(capsys, "calls", "show", "CA" + "c" * 32)


def test_a_failed_tool_result_reads_failed_once() -> None:
    """The executor's error text starts with "failed: " itself: ``calls show`` printed
    "<- BookTable failed: failed: RuntimeError: ..." (helper-36)."""
    use = {"toolUseId": "t1", "name": "BookTable", "input": {}}
    result = {"toolUseId": "t1", "status": "error",
              "content": [{"text": "failed: RuntimeError: no kitchen printer"}]}
    entries = tuple(records.chat_from_item(records.chat_item(
        CALL_SID, EPOCH_S * 1000 + at, seq, {"role": role, "content": [block]}, {},
        ttl_s=TTL_S)) for seq, (at, role, block) in enumerate(
            [(0, "assistant", {"toolUse": use}), (100, "user", {"toolResult": result})]))
    lines = transcripts.transcript_lines(transcripts.Transcript(CALL_SID, None, entries))
    assert lines[-1].text == "<- BookTable failed: RuntimeError: no kitchen printer"


def test_a_reader_that_leaves_early_gets_no_traceback(
        sqlite_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`voiceagent calls list | head -1`: the pipe closes before the output is written."""
    import subprocess
    import sys
    run(capsys, "store", "init")
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run([sys.executable, "-m", "voiceagent", "calls", "list"],
                              stdout=write_end, stderr=subprocess.PIPE, text=True,
                              timeout=60, cwd=str(tmp_path),
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    finally:
        os.close(write_end)
    assert "Traceback" not in done.stderr
    assert "BrokenPipeError" not in done.stderr
    assert done.returncode == 141


def test_calls_show_a_real_call(sqlite_env: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    """The items a real call writes (greeting, barge-in, tool round) read as a transcript."""
    identity = Identity(from_number="+15555550111")

    async def call() -> None:
        settings = make_settings(tmp_path, DATA_DIR=sqlite_env)
        with trio.fail_after(20):
            async with running_server(settings) as server:
                async with open_call(server.url, auth_token=AUTH_TOKEN,
                                     identity=identity) as relay:
                    await relay.say("tell me a story")
                    while len(relay.heard.split()) < 3:
                        assert await relay.receive() is not None
                    await relay.interrupt(heard="Once upon")
                    await relay.say("when can I pick up my order?")
                    replies = [await relay.read_reply() for _ in range(2)]
                    assert replies[-1].text.startswith("Your order will be ready")
                    await relay.hang_up()
                await server.runtime.calls.wait_idle()

    trio.run(call)
    listed = run(capsys, "calls", "list")
    assert listed[1].startswith(identity.call_sid)
    assert listed[1].endswith("testUseCase  +1555***0111  7")
    shown = run(capsys, "calls", "show", identity.call_sid)
    assert shown[1] == ("  use case testUseCase, from +1555***0111 to +1555***0199, "
                        "model scripted (offline)")           # not the Bedrock model unused
    speakers = [line[11:17].strip() for line in shown[4:] if line[11:17].strip()]
    assert speakers == ["agent", "caller", "agent", "caller", "agent", "tool", "agent"]
    text = "\n".join(shown)
    assert "barge-in: the line above is what the caller heard" in text
    assert " agent   Once upon\n" in text
    assert "generated: Once upon a" in text
    assert "-> CheckRestaurantPickUpTime {}" in text
    assert "<- CheckRestaurantPickUpTime result: {" in text


def test_calls_list_survives_a_malformed_chat_item(sqlite_env: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """One call's chat item whose ``chat`` is not a map (written by hand, or by another
    tool) costs that call nothing in the listing; parsing every item to count them lost
    the whole listing (helper-22)."""
    other = "CA" + "b" * 32

    async def fill() -> None:
        async with open_sqlite_store(sqlite_env / "voiceagent.db",
                                     limiter=trio.CapacityLimiter(2)) as store:
            await store.put_many(_conversation())
            await store.put({"pk": other, "sk": "chat::0000000001000::000000",
                             "chat": '{"role": "user"}'})

    trio.run(fill)
    assert run(capsys, "calls", "list")[1:] == [
        other + "  2025-06-15 16:06:40 UTC  otherUseCase  +1555***0123  1",
        "CA" + "a" * 32 + "  2025-06-15 15:06:40 UTC  testUseCase   +1555***0100  7"]
