"""A server cancelled under a live call (the program embedding it cancels its scope, or its
Ctrl-C does) still writes the call's transcript, at once, to a healthy store.

Found by ``benchmarks/bench_token_calls.py``, which stops its server that way: "store flush
timed out", twice a run. The write-behind drainer was cancelled with everything else and
died first; the call's flush, shielded so that it runs even then, waited FLUSH_TIMEOUT_S for
writes nobody would make, and the runtime's own shielded flush waited as long again. The
store was fine; the transcript was lost, and the stop took twice FLUSH_TIMEOUT_S."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
import trio

from tests.server_harness import AUTH_TOKEN, make_settings, running_server
from voiceagent.app.caller import open_call
from voiceagent.store.sqlite import open_sqlite_store

pytestmark = pytest.mark.timeout(120)

FLUSH_TIMEOUT_S = 20.0


async def test_a_call_cancelled_with_its_server_is_written_without_waiting(
        tmp_path: Path, records: list[logging.LogRecord]) -> None:
    settings = make_settings(tmp_path, FLUSH_TIMEOUT_S=str(FLUSH_TIMEOUT_S))
    embedding = trio.CancelScope()        # the program that embeds the server
    serving, stopped = trio.Event(), trio.Event()
    urls: list[str] = []
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            async def embedded() -> None:
                with embedding:
                    async with running_server(settings) as server:
                        urls.append(server.url)
                        serving.set()
                        await trio.sleep_forever()
                stopped.set()

            nursery.start_soon(embedded)
            await serving.wait()
            async with open_call(urls[0], auth_token=AUTH_TOKEN) as call:
                call_sid = call.identity.call_sid
                await call.say("what are your hours?")
                reply = await call.read_reply()
                assert reply.closed
                assert reply.tokens
                started = time.monotonic()
                embedding.cancel()          # the call is up: it is cancelled with the rest
                await stopped.wait()
                stop_s = time.monotonic() - started
                while await call.receive() is not None:     # to the socket's close
                    pass
        async with open_sqlite_store(tmp_path / "voiceagent.db",
                                     limiter=trio.CapacityLimiter(1)) as store:
            chat = await store.query(call_sid, "chat::")
    assert stop_s < FLUSH_TIMEOUT_S / 2, stop_s          # was 2 x FLUSH_TIMEOUT_S
    assert [item["chat"]["role"] for item in chat] == ["assistant", "user", "assistant"]
    mine = [r for r in records if vars(r).get("call_sid") == call_sid]
    (ended,) = [r for r in mine if r.getMessage() == "call ended"]
    assert vars(ended)["ended_by"] == "cancelled"
    assert vars(ended)["flushed"] is True
    assert not [r for r in records if r.getMessage() == "store flush timed out"]
