"""The benchmarks' DynamoDB stand-in (``tests/moto_kept_alive.py``: moto under hypercorn)
keeps connections alive, as DynamoDB does: two signed requests are answered on one
connection without ``Connection: close``, and our store's writes and reads go through it
end to end on a single connection. ``python -m moto.server`` (werkzeug) fails both: it
closes the connection after every answer.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h11
import pytest
import trio
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.dynamodb_support import REGION, MotoServer, aws_env, isolate_env, open_test_table
from voiceagent.settings import Settings
from voiceagent.store.dynamodb import open_dynamodb_store

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def kept_alive_moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    moto = MotoServer(tmp_path_factory.mktemp("moto") / "moto.log", kept_alive=True).start()
    try:
        yield moto
    finally:
        moto.stop()


def _signed_list_tables(moto: MotoServer) -> h11.Request:
    body = b"{}"
    request = AWSRequest(method="POST", url=moto.endpoint + "/", data=body, headers={
        "Content-Type": "application/x-amz-json-1.0",
        "X-Amz-Target": "DynamoDB_20120810.ListTables"})
    SigV4Auth(Credentials("testing", "testing"), "dynamodb", REGION).add_auth(request)
    headers = [("Host", f"127.0.0.1:{moto.port}"), ("Content-Length", str(len(body))),
               *request.headers.items()]
    return h11.Request(method="POST", target="/", headers=headers)


async def _exchange(stream: trio.SocketStream, state: h11.Connection, request: h11.Request
                    ) -> tuple[h11.Response, dict[str, Any]]:
    await stream.send_all(state.send(request) + state.send(h11.Data(data=b"{}"))
                          + state.send(h11.EndOfMessage()))
    response, body = None, b""
    while True:
        event = state.next_event()
        if event is h11.NEED_DATA:
            state.receive_data(await stream.receive_some(65536))
        elif isinstance(event, h11.Response):
            response = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            break
        else:
            raise AssertionError(f"the connection ended before the answer did: {event!r}")
    assert response is not None
    return response, json.loads(body)


async def test_two_requests_are_answered_on_one_connection(kept_alive_moto: MotoServer
                                                           ) -> None:
    with trio.fail_after(20):
        stream = await trio.open_tcp_stream("127.0.0.1", kept_alive_moto.port)
        async with stream:
            state = h11.Connection(h11.CLIENT)
            for _ in range(2):
                response, answer = await _exchange(
                    stream, state, _signed_list_tables(kept_alive_moto))
                assert response.status_code == 200, answer
                assert "TableNames" in answer
                assert (b"connection", b"close") not in [
                    (name, value.lower()) for name, value in response.headers]
                assert state.our_state is h11.DONE
                assert state.their_state is h11.DONE
                state.start_next_cycle()        # h11 refuses this once either side closes


async def test_the_store_writes_and_reads_over_one_kept_connection(
        kept_alive_moto: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint = kept_alive_moto.endpoint
    isolate_env(monkeypatch, aws_env(endpoint, tmp_path))
    profile = {"pk": "+15555550123", "sk": "profile", "pk1": "profile",
               "sk1": "2026-01-02T03:04:05Z", "name": "Zoë", "n": 42}
    messages = [{"pk": "CA01", "sk": f"chat::{i:03d}", "i": i, "text": f"message {i} ✓"}
                for i in range(30)]
    with trio.fail_after(30):
        async with open_test_table(endpoint) as table:
            settings = Settings.from_env(STORE="dynamodb", TABLE_NAME=table.table_name,
                                         VALIDATE_SIGNATURES=False)
            async with open_dynamodb_store(settings, limiter=trio.CapacityLimiter(4)) as store:
                assert store._http is not None
                await store.put(profile)
                await store.put_many(messages)              # two BatchWriteItems
                assert await store.get("+15555550123", "profile") == profile
                assert await store.get("+15555550123", "nothing here") is None
                assert await store.query("CA01") == messages
                pool = store._http._pool
                # six requests, one after another: the first connection carried them all
                assert (pool.opened, pool.reused, pool.idle) == (1, 5, 1)
