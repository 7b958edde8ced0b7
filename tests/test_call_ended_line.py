"""A call's last log line, "call ended", read as the operator paged at 3 a.m. reads it,
filtering on the CallSid: it must be there however the call ended, and say whether the
call's transcript reached the store.

Two holes, found by running real calls and reading their JSON lines. A store that was down
as the call ended: the call's flush was bounded by a scope equal to the flush's own timeout,
which fired first, so the write-behind's "store flush timed out" line (with its CallSid)
was never written and the call ended as if flushed. A call still up when the server stopped
(a peer that had not closed past END_GRACE_S): the call was cancelled, and its "call ended"
line, written after the teardown, was skipped; the CallSid's story stopped at "end sent",
and the call was counted as a hang-up. And the line before it, "relay closed by peer", did
not give the peer's close code."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from tests.call_harness import CALL_SID, open_test_call
from tests.dynamodb_support import aws_env, isolate_env
from tests.fakes import FakeLLM, words
from tests.server_harness import AUTH_TOKEN, make_settings, running_server
from voiceagent.app.caller import open_call
from voiceagent.llm.base import Message
from voiceagent.settings import Settings
from voiceagent.store.dynamodb import open_dynamodb_store
from voiceagent.store.records import chat_item
from voiceagent.store.write_behind import WriteBehind

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """Bound for the test and never listening: DynamoDB down, every connection refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def _lines(logged: list[logging.LogRecord], call_sid: str) -> list[logging.LogRecord]:
    return [r for r in logged if vars(r).get("call_sid") == call_sid]


async def test_a_call_whose_transcript_did_not_reach_the_store_says_so(
        autojump_clock: trio.testing.MockClock, refusing_port: int, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, records: list[logging.LogRecord]) -> None:
    isolate_env(monkeypatch, aws_env(f"http://127.0.0.1:{refusing_port}", tmp_path))
    settings = Settings.from_env(STORE="dynamodb", TABLE_NAME="storeDown",
                                 VALIDATE_SIGNATURES=False)
    async with (open_dynamodb_store(settings, limiter=trio.CapacityLimiter(4),
                                    check_table=False) as store,
                trio.open_nursery() as nursery):
        writer = WriteBehind(store, jitter=lambda: 1.0)
        await nursery.start(writer.run)

        def persist(call_sid: str, index: int, message: Message, meta: dict[str, Any]) -> None:
            item = chat_item(call_sid, int(meta.get("at_ms", 0)), index, message,
                                     meta, 3600)
            writer.submit(item, call_sid=call_sid)

        async def flush(call_sid: str, timeout_s: float) -> bool:
            return await writer.flush(call_sid, timeout_s=timeout_s)

        started = trio.current_time()
        llm = FakeLLM([words("We open at eleven.")])
        async with open_test_call(llm, services_changes={
                "persist": persist, "flush": flush, "flush_timeout_s": 5.0}) as call:
            call.say("when do you open?")
            await call.reply()
            await call.hang_up()
        assert trio.current_time() - started < 5.0 + 2.0       # the flush's bound held
        nursery.cancel_scope.cancel(reason="test over")
    mine = _lines(records, CALL_SID)
    events = [r.getMessage() for r in mine]
    assert "store flush timed out" in events
    (ended,) = [r for r in mine if r.getMessage() == "call ended"]
    assert vars(ended)["ended_by"] == "hangup"
    assert vars(ended)["flushed"] is False
    assert events.index("store flush timed out") < events.index("call ended")


async def test_a_call_cut_by_the_server_stopping_still_has_its_end_line(
        tmp_path: Path, records: list[logging.LogRecord]) -> None:
    """The server stops with a call up whose peer never closes, even after our `end`
    (Twilio closes at once; a peer gone without a FIN does not): past DRAIN_TIMEOUT_S and
    END_GRACE_S the call is cancelled. Its line says so, after its "end sent"."""
    settings = make_settings(tmp_path, DRAIN_TIMEOUT_S="0.2", END_GRACE_S="0.2")
    call_sids: list[str] = []
    answered = trio.Event()

    async def caller(url: str) -> None:
        async with open_call(url, auth_token=AUTH_TOKEN) as call:
            call_sids.append(call.identity.call_sid)
            await call.say("what are your hours?")
            await call.read_reply()
            answered.set()
            while await call.receive() is not None:      # never closes, reads to the end
                pass

    started = time.monotonic()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            async with running_server(settings) as server:
                nursery.start_soon(caller, server.url)
                await answered.wait()
    assert time.monotonic() - started < 15
    mine = _lines(records, call_sids[0])
    events = [r.getMessage() for r in mine]
    assert "end sent" in events
    (ended,) = [r for r in mine if r.getMessage() == "call ended"]
    assert vars(ended)["ended_by"] == "cancelled"
    assert vars(ended)["turns"] == 1
    assert events.index("end sent") < events.index("call ended")


async def test_the_relay_close_line_gives_the_peers_close_code(
        tmp_path: Path, records: list[logging.LogRecord]) -> None:
    """"relay closed by peer" said ``dropped`` only: Twilio's side failing (1011, its
    debugger has the error) and a hang-up looked alike but for that flag."""
    sids: list[str] = []
    with trio.fail_after(30):
        async with running_server(make_settings(tmp_path)) as server:
            for fail in (False, True):
                async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                    sids.append(call.identity.call_sid)
                    await call.say("what are your hours?")
                    await call.read_reply()
                    await (call.fail() if fail else call.hang_up())
            await server.runtime.calls.wait_idle()
    closed = {vars(r)["call_sid"]: vars(r) for r in records
              if r.getMessage() == "relay closed by peer"}
    assert (closed[sids[0]]["close_code"], closed[sids[0]]["dropped"]) == (1000, False)
    assert (closed[sids[1]]["close_code"], closed[sids[1]]["dropped"]) == (1011, True)
