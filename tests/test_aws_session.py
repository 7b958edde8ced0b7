"""The runtime makes its DynamoDB client and resolves its Bedrock endpoint from one botocore
session: each session loads and keeps its own copy of botocore's data (partitions, endpoint
rules, defaults, service models), ~7 MB a server process paid twice (benchmarks/RESULTS.md,
issue 20). Once both clients exist the session goes, and with it the data only client creation
needed (``endpoints.json``, ~8 MB). Against moto's server and the local ConverseStream
endpoint: both still work, each reached where the environment says.
"""

from __future__ import annotations

import gc
import tracemalloc
import weakref
from pathlib import Path
from typing import Any

import botocore.session
import pytest
import trio
import trio.testing

from tests.dynamodb_support import aws_env, isolate_env, moto_endpoint, open_test_table
from tests.fake_bedrock import running_fake_bedrock, text_reply
from tests.settled_clock import jump_when_settled
from voiceagent.app.runtime import open_runtime
from voiceagent.aws_session import StartupSession, new_session
from voiceagent.llm.base import LLMRequest, TextDelta
from voiceagent.settings import Settings
from voiceagent.store import dynamodb_http
from voiceagent.store.dynamodb import open_dynamodb_store

__all__ = ["moto_endpoint"]          # the fixture, imported so pytest finds it here

pytestmark = pytest.mark.timeout(60)

REQUEST = LLMRequest(call_sid="CA" + "0" * 32, use_case="testUseCase",
                     model_id="amazon.nova-lite-v1:0", system=("You are a host.",),
                     messages=({"role": "user", "content": [{"text": "When do you open?"}]},))


def _spy_on_clients(monkeypatch: pytest.MonkeyPatch,
                    sessions: list[weakref.ref[botocore.session.Session]] | None = None
                    ) -> list[tuple[str, int]]:
    """(service, the id of the session it came from) for every botocore client made;
    ``sessions``: a weak reference to each such session, too."""
    made: list[tuple[str, int]] = []
    create = botocore.session.Session.create_client

    def spy(self: botocore.session.Session, service_name: str, *args: Any,
            **kwargs: Any) -> Any:
        made.append((service_name, id(self)))
        if sessions is not None:
            sessions.append(weakref.ref(self))
        return create(self, service_name, *args, **kwargs)

    monkeypatch.setattr(botocore.session.Session, "create_client", spy)
    return made


async def test_the_store_and_the_model_come_from_one_session_and_both_work(
        moto_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with trio.fail_after(30):
        async with running_fake_bedrock() as fake, open_test_table(moto_endpoint) as table:
            isolate_env(monkeypatch, {**aws_env(moto_endpoint, tmp_path),
                                      "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": fake.endpoint_url})
            made = _spy_on_clients(monkeypatch)
            fake.push(text_reply(["We open", " at nine."]))
            settings = Settings.from_env(STORE="dynamodb", TABLE_NAME=table.table_name,
                                         LLM="bedrock", VALIDATE_SIGNATURES=False,
                                         CONFIG_DIR=str(tmp_path))
            async with open_runtime(settings) as runtime:
                await runtime.store.put({"pk": "+15555550123", "sk": "profile", "n": 1})
                assert await runtime.store.get("+15555550123", "profile") == {
                    "pk": "+15555550123", "sk": "profile", "n": 1}
                async with runtime.llm.stream(REQUEST) as events:
                    said = "".join([e.text async for e in events if isinstance(e, TextDelta)])
    assert said == "We open at nine."
    assert sorted(service for service, _ in made) == ["bedrock-runtime", "dynamodb"]
    assert len({session for _, session in made}) == 1, made
    assert fake.violations == []



async def test_a_store_opened_alone_reads_the_aws_config_through_one_session(
        moto_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its client and its requests from the loop (CA bundle, proxy) share the session it
    makes, as the runtime's store and model share the runtime's."""
    linked: list[int | None] = []
    link = dynamodb_http.link_settings

    def spy_link(*args: Any, session: botocore.session.Session | None = None,
                 **kwargs: Any) -> Any:
        linked.append(None if session is None else id(session))
        return link(*args, session=session, **kwargs)

    with trio.fail_after(30):
        async with open_test_table(moto_endpoint) as table:
            isolate_env(monkeypatch, aws_env(moto_endpoint, tmp_path))
            made = _spy_on_clients(monkeypatch)
            monkeypatch.setattr(dynamodb_http, "link_settings", spy_link)
            settings = Settings.from_env(STORE="dynamodb", TABLE_NAME=table.table_name,
                                         VALIDATE_SIGNATURES=False)
            async with open_dynamodb_store(settings, limiter=trio.CapacityLimiter(2)) as store:
                await store.put({"pk": "a", "sk": "b"})
                assert await store.get("a", "b") == {"pk": "a", "sk": "b"}
    assert [service for service, _ in made] == ["dynamodb"]
    assert linked == [made[0][1]]


# botocore's data is parsed 4 frames under its loader (json's loads, decode, raw_decode);
# 8 leaves room for another Python's json. Every frame kept is paid on every allocation
# traced: 8 find the same bytes as 16 (1.95 MB; 8.98 MB with the session kept) in half the
# time (3.5 s alone, not 6 s).
TRACED_FRAMES = 8


def _botocore_data_bytes(snapshot: tracemalloc.Snapshot) -> int:
    """Bytes still alive that botocore's loader allocated (the JSON data files it parsed)."""
    return sum(stat.size for stat in snapshot.statistics("traceback")
               if any(frame.filename.endswith("botocore/loaders.py")
                      for frame in stat.traceback))


async def test_once_both_clients_exist_nothing_keeps_the_session_or_its_data(
        moto_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        mock_clock: trio.testing.MockClock) -> None:
    """What a server process holds for its whole life: the clients, not the session they
    were made from nor the files only client creation reads (~10 MB kept, before; the
    DynamoDB client's own service model, ~2 MB, is what is left). On the virtual clock,
    still in worker threads (``settled_clock``): traced, client creation took 20 s and more
    on a loaded machine, past the 30 s limit under the full suite's load."""
    jump_when_settled(mock_clock, monkeypatch)
    sessions: list[weakref.ref[botocore.session.Session]] = []
    with trio.fail_after(30):
        async with running_fake_bedrock() as fake, open_test_table(moto_endpoint) as table:
            isolate_env(monkeypatch, {**aws_env(moto_endpoint, tmp_path),
                                      "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": fake.endpoint_url})
            made = _spy_on_clients(monkeypatch, sessions)
            fake.push(text_reply(["Still", " here."]))
            settings = Settings.from_env(STORE="dynamodb", TABLE_NAME=table.table_name,
                                         LLM="bedrock", VALIDATE_SIGNATURES=False,
                                         CONFIG_DIR=str(tmp_path))
            tracemalloc.start(TRACED_FRAMES)
            try:
                async with open_runtime(settings) as runtime:
                    gc.collect()
                    kept = _botocore_data_bytes(tracemalloc.take_snapshot())
                    alive = [ref() for ref in sessions if ref() is not None]
                    await runtime.store.put({"pk": "+15555550123", "sk": "profile", "n": 2})
                    assert (await runtime.store.query("+15555550123"))[0]["n"] == 2
                    async with runtime.llm.stream(REQUEST) as events:
                        said = "".join([e.text async for e in events
                                        if isinstance(e, TextDelta)])
            finally:
                tracemalloc.stop()
    assert sorted(service for service, _ in made) == ["bedrock-runtime", "dynamodb"]
    assert alive == []
    assert kept < 4_000_000, f"{kept / 1e6:.1f} MB of botocore's data files still held"
    assert said == "Still here."


def test_the_session_reads_each_data_file_anew_and_keeps_none() -> None:
    """botocore's own loader hands out the object it keeps; ours parses again."""
    ours = new_session().get_component("data_loader")
    theirs = botocore.session.Session().get_component("data_loader")
    assert ours.load_data("partitions") == ours.load_data("partitions")
    assert ours.load_data("partitions") is not ours.load_data("partitions")
    assert theirs.load_data("partitions") is theirs.load_data("partitions")


def test_the_lender_gives_one_session_until_released() -> None:
    lender = StartupSession()
    first = lender.get()
    assert lender.get() is first
    lender.release()
    again = lender.get()
    assert again is not first
    assert again.get_component("data_loader") is not first.get_component("data_loader")
