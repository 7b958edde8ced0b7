"""A stop with the store down ends within its one budget (``stop_budget``), and says what it
dropped. Each flush of a stop used to take its own FLUSH_TIMEOUT_S (the calls', the drain's,
then the runtime's last, after the watchdog had gone), and the write-behind's attempt in
flight its own read timeout: with the store refusing or stalled at shutdown the phases added
up past the budget, on Fargate past StopTimeout, and SIGKILL took the lines saying what was
lost. On trio's virtual clock: a store that refuses every write (the real server, a live
call), and a DynamoDB that answers nothing (the real store's writer on 127.0.0.1)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from tests.fake_dynamodb import FakeDynamoDB, Reply, http_store, running_fake_dynamodb
from tests.server_harness import AUTH_TOKEN, make_settings, running_server, until_started
from tests.settled_clock import jump_when_settled
from voiceagent.app.caller import open_call
from voiceagent.app.runtime import open_runtime
from voiceagent.app.server import drain
from voiceagent.app.stop_budget import GRACEFUL_S, budget_s
from voiceagent.errors import StoreError
from voiceagent.llm.scripted import ScriptedLLM

pytestmark = pytest.mark.timeout(60)

DROPPED = "store writes dropped at shutdown"
SIDS = ("CA" + "1" * 32, "CA" + "2" * 32)


def _dropped(records: list[logging.LogRecord]) -> tuple[dict[str, int], dict[str, Any]]:
    """The dropped items by CallSid (each call's own line), and the process's summary."""
    lines = [vars(r) for r in records if r.getMessage() == DROPPED]
    by_call = {line["call_sid"]: line["items"] for line in lines if line["call_sid"] != "-"}
    (summary,) = [line for line in lines if line["call_sid"] == "-"]
    return by_call, summary


async def test_a_stop_with_the_store_refusing_writes_ends_within_its_budget(
        tmp_path: Path, mock_clock: trio.testing.MockClock,
        monkeypatch: pytest.MonkeyPatch, records: list[logging.LogRecord]) -> None:
    """The live call is ended at the drain deadline and its flush fails, the drain's flush
    fails, and the runtime's last flush had FLUSH_TIMEOUT_S more of its own: 20 + 5 + 10 +
    10 = 45 s, past the 42 s these settings allow. Now it has what is left."""
    jump_when_settled(mock_clock, monkeypatch)
    settings = make_settings(tmp_path, DRAIN_TIMEOUT_S=20, END_GRACE_S=5, FLUSH_TIMEOUT_S=10)
    assert budget_s(settings) == 42
    hung_up = trio.Event()

    async def refused(*_: Any, **__: Any) -> None:
        await trio.lowlevel.checkpoint()
        raise StoreError("dynamodb BatchWriteItem failed: ServiceUnavailable")

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            async with running_server(settings) as server:
                talking = trio.Event()

                async def caller() -> None:
                    async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                        sids.append(call.identity.call_sid)
                        await until_started(server.runtime.calls, 1)
                        await call.say("what are your hours?")
                        assert (await call.read_reply()).closed
                        talking.set()
                        while await call.receive() is not None:   # the goodbye, the end
                            pass
                    hung_up.set()

                sids: list[str] = []
                nursery.start_soon(caller)
                await talking.wait()
                for name in ("put", "put_many", "put_new", "put_if_newer", "put_unless_newer"):
                    monkeypatch.setattr(server.runtime.store, name, refused)
                server.runtime.writer.submit({"pk": sids[0], "sk": "chat::late"},
                                             call_sid=sids[0])
                started = trio.current_time()
            took = trio.current_time() - started
            await hung_up.wait()
    assert took <= budget_s(settings), took
    drained = [vars(r) for r in records if r.getMessage() == "drained"]
    assert drained[0]["flushed"] is False
    by_call, summary = _dropped(records)
    assert list(by_call) == sids
    assert by_call[sids[0]] >= 1
    assert summary["call_sids"] == sids
    assert summary["items"] == by_call[sids[0]]
    assert not [r for r in records if r.getMessage() == DROPPED     # no payloads
                and ("hours" in str(vars(r)) or "chat::" in str(vars(r)))]


@pytest.fixture
async def fake(aws_env: None, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDynamoDB]:
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
                 "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    async with running_fake_dynamodb() as server:
        yield server


async def test_a_stop_with_dynamodb_stalled_ends_within_its_budget(
        fake: FakeDynamoDB, tmp_path: Path, mock_clock: trio.testing.MockClock,
        monkeypatch: pytest.MonkeyPatch, records: list[logging.LogRecord]) -> None:
    """DynamoDB takes the requests and answers nothing: each attempt runs its 4 s read
    timeout. The drain's flush waits its 10 s, the runtime's last flush waited 10 s more, and
    the drainer's attempt in flight its read timeout after that: 20 s and more, past the
    17 s these settings allow. Now the last flush and the attempt end with the budget."""
    jump_when_settled(mock_clock, monkeypatch)
    settings = make_settings(tmp_path, STORE="dynamodb", TABLE_NAME="fake-table",
                             DRAIN_TIMEOUT_S=0, END_GRACE_S=0, FLUSH_TIMEOUT_S=10)
    assert budget_s(settings) == 17
    with trio.fail_after(120):
        async with http_store(fake.endpoint_url, read_timeout_s=4.0) as store:
            async with open_runtime(settings, store=store, llm=ScriptedLLM({})) as runtime:
                fake.script.extend(Reply("stall") for _ in range(50))
                for n, sid in enumerate(SIDS):
                    for index in range(n + 2):
                        runtime.writer.submit({"pk": sid, "sk": f"chat::{index:04d}",
                                               "text": "my card number is secret"},
                                              call_sid=sid)
                await fake.wait_requests(1)         # the first batch sent, and no answer
                started = trio.current_time()
                await drain(runtime)
            took = trio.current_time() - started
    assert took <= budget_s(settings), took
    assert fake.items == {}
    by_call, summary = _dropped(records)
    assert by_call == {SIDS[0]: 2, SIDS[1]: 3}
    assert (summary["items"], summary["calls"], summary["call_sids"]) == (5, 2, list(SIDS))
    assert not [r for r in records if "secret" in str(vars(r))]



TIMED_OUT = "store flush timed out"


@pytest.mark.parametrize("second_drain", [False, True])
async def test_a_flush_the_stop_cuts_short_logs_no_timeout_of_its_own(
        second_drain: bool, tmp_path: Path, mock_clock: trio.testing.MockClock,
        monkeypatch: pytest.MonkeyPatch, records: list[logging.LogRecord]) -> None:
    """The store refuses writes at a stop: the drain's flush times out, once, with its
    FLUSH_TIMEOUT_S. A flush after it has only what is left of the budget: a second drain,
    past it, logged "store flush timed out" with ``timeout_s`` 0.0, read as another fault;
    the runtime's last flush, with GRACEFUL_S left, was quiet only because an outer scope
    with the same deadline took the cancel. The budget spent is said by the dropped-writes
    lines, under the CallSid."""
    jump_when_settled(mock_clock, monkeypatch)
    settings = make_settings(tmp_path, DRAIN_TIMEOUT_S=0, END_GRACE_S=0, FLUSH_TIMEOUT_S=10)

    async def refused(*_: Any, **__: Any) -> None:
        await trio.lowlevel.checkpoint()
        raise StoreError("dynamodb BatchWriteItem failed: ServiceUnavailable")

    with trio.fail_after(120):
        async with open_runtime(settings, llm=ScriptedLLM({})) as runtime:
            for name in ("put", "put_many", "put_new", "put_if_newer", "put_unless_newer"):
                monkeypatch.setattr(runtime.store, name, refused)
            runtime.writer.submit({"pk": SIDS[0], "sk": "chat::0000"}, call_sid=SIDS[0])
            await drain(runtime)
            assert runtime.stop is not None
            assert runtime.stop.flushes_end - trio.current_time() == pytest.approx(GRACEFUL_S)
            if second_drain:                # a drain with no flush time left
                await trio.sleep_until(runtime.stop.flushes_end)
                await drain(runtime)
    assert [vars(r)["flushed"] for r in records
            if r.getMessage() == "drained"] == [False] * (1 + second_drain)
    assert [vars(r)["timeout_s"] for r in records if r.getMessage() == TIMED_OUT] == [10.0]
    by_call, summary = _dropped(records)
    assert by_call == {SIDS[0]: 1}
    assert summary["why"] == "the store did not take them in time"
