"""DynamoDB's requests leave no garbage in reference cycles, answered or failed.

The server lets a middle-generation collection wait for 10 000 young ones
(``voiceagent/app/heap.py``): a cycle a request is held 15-20 minutes under load. botocore
makes a parser for every response, and by default each keeps its own bound method: a cycle
for every request through the boto3 client (table work now; every query once, one on every
``/twiml``). The store's session gives botocore's parsers their blob
parser (``voiceagent.aws_session``). The requests the event loop sends itself (queries, item
reads and writes) are looked at, answered, throttled and with their answer lost (a read then
tried again), through ``dynamodb_front`` in front of moto; and whole calls on the production
stack (this store, Bedrock's endpoint): /twiml, turns, a barge-in, the hang-up.

Not covered, and left: botocore's own retry after a connection reset (urllib3 keeps the
error it raises in a local of the frame it raised it from), now only on table work.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing

from tests.dynamodb_front import Fault, Front, running_front
from tests.dynamodb_support import aws_env, isolate_env, moto_endpoint, open_test_table
from tests.fake_bedrock import running_fake_bedrock, text_reply
from tests.server_harness import FIXTURE_CONFIG
from tests.test_calls_leave_no_cycles import (
    LONG,
    _beyond_the_route_matcher,
    _cyclic_garbage,
    _kind,
    barge_in_on_a_stream,
    calls_garbage,
)
from voiceagent.app.testing import agent_server
from voiceagent.catalog import read_config_dir, write_config
from voiceagent.errors import StoreError
from voiceagent.settings import Settings
from voiceagent.store.dynamodb import DynamoDBStore, open_dynamodb_store
from voiceagent.tools.registry import default_registry

__all__ = ["moto_endpoint"]          # the fixture, imported so pytest finds it here

pytestmark = pytest.mark.timeout(60)


async def _requests(store: DynamoDBStore, front: Front,
                    faults: dict[str, Fault] | None = None) -> None:
    """Three rounds of a query, a read and a write (the loop's own), each meeting its
    operation's fault at the front, if any: answered as a ``StoreError``, or tried again
    within the request by the client."""
    for i in range(3):
        item = {"pk": "+15555550100", "sk": str(i), "v": "x"}
        for operation, request in (("Query", partial(store.query, "+15555550100")),
                                   ("GetItem", partial(store.get, "+15555550100", "0")),
                                   ("PutItem", partial(store.put, item))):
            if faults and operation in faults:
                front.faults[operation].append(faults[operation])
            with contextlib.suppress(StoreError):
                await request()


CASES = {
    "answered": None,
    "throttled": {"Query": Fault.THROTTLE, "GetItem": Fault.THROTTLE, "PutItem": Fault.THROTTLE},
    "answer lost": {"Query": Fault.LOSE_ANSWER, "GetItem": Fault.LOSE_ANSWER,
                    "PutItem": Fault.LOSE_ANSWER},
}


@pytest.mark.parametrize("case", CASES.values(), ids=list(CASES))
async def test_dynamodb_requests_leave_no_cycles(case: dict[str, Fault] | None, tmp_path: Path,
                                                moto_endpoint: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    isolate_env(monkeypatch, aws_env(moto_endpoint, tmp_path))
    with trio.fail_after(40):
        async with open_test_table(moto_endpoint) as table, running_front(moto_endpoint) as front:
            settings = Settings.from_env(STORE="dynamodb", TABLE_NAME=table.table_name,
                                         VALIDATE_SIGNATURES=False)
            monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", front.url)
            async with open_dynamodb_store(settings, limiter=trio.CapacityLimiter(4)) as store:
                await _requests(store, front)       # first-use work aside
                with _cyclic_garbage() as garbage:
                    await _requests(store, front, case)
                    await trio.testing.wait_all_tasks_blocked(0.05)
    met = Counter(operation for operation, fault in front.seen if fault is not None)
    assert met == Counter({operation: 3 for operation in case or {}})
    assert Counter(_kind(obj) for obj in garbage) == Counter()


async def test_calls_on_dynamodb_and_bedrock_leave_no_cycles(
        tmp_path: Path, moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    isolate_env(monkeypatch, aws_env(moto_endpoint, tmp_path))
    async with open_test_table(moto_endpoint) as table, running_fake_bedrock(
            responder=lambda _: text_reply(LONG, gap_s=0.01)) as fake:
        monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", fake.endpoint_url)
        await write_config(table, read_config_dir(Path(FIXTURE_CONFIG), default_registry()))
        with trio.fail_after(40):
            async with agent_server(FIXTURE_CONFIG, use_case="testUseCase", data_dir=tmp_path,
                                    LLM="bedrock", STORE="dynamodb",
                                    TABLE_NAME=table.table_name) as agent:
                garbage = await calls_garbage(agent, barge_in_on_a_stream)
    assert _beyond_the_route_matcher(garbage, requests=3 * 2) == Counter()
