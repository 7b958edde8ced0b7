"""Graceful drain with a real process and a real SIGTERM: the load balancer is told first,
live calls finish or are ended politely, writes are flushed, the process exits 0; and a peer
that stopped reading cannot hold a deploy."""

from __future__ import annotations

import json
import signal
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import trio

from tests.send_waits import until_it_waits_to_send
from tests.serve_process import serve_process
from tests.server_harness import AUTH_TOKEN
from voiceagent.app.caller import Identity, open_call
from voiceagent.store.sqlite import open_sqlite_store

pytestmark = pytest.mark.slow


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return err.code


async def test_sigterm_drains_live_calls_then_exits_zero(tmp_path: Path) -> None:
    identity = Identity()
    with trio.fail_after(60):
        async with serve_process(tmp_path, DRAIN_TIMEOUT_S="1.5", END_GRACE_S="5") as server:
            assert await trio.to_thread.run_sync(_get, server.url + "/health") == 200
            async with open_call(server.url, auth_token=AUTH_TOKEN, identity=identity) as call:
                await call.say("what are your hours?")
                assert (await call.read_reply()).text.startswith("We are open")
                server.process.send_signal(signal.SIGTERM)
                await server.wait_log("draining")
                assert await trio.to_thread.run_sync(_get, server.url + "/health") == 503
                refused = await _twiml_status_and_body(server.url)
                assert "ConversationRelay" not in refused
                await call.say("what are your hours?")           # the live call goes on
                assert (await call.read_reply()).text.startswith("We are open")
                goodbye = await call.read_reply()                # then the drain deadline
                assert "call back in a minute" in goodbye.text
                assert goodbye.closed
                end = await call.receive()
                assert end is not None
                assert end["type"] == "end"
                assert json.loads(end["handoffData"]) == {"reasonCode": "server-draining"}
            assert await server.process.wait() == 0
            drained = await server.wait_log("drained")
    assert drained["flushed"] is True
    async with open_sqlite_store(tmp_path / "data" / "voiceagent.db",
                                 limiter=trio.CapacityLimiter(1)) as store:
        items = await store.query(identity.call_sid, "chat::")
    said = [b.get("text", "") for item in items for b in item["chat"]["content"]]
    assert said[0] == "Hello, this is Test Pizza."
    assert "call back in a minute" in said[-1]


async def test_a_second_sigterm_during_the_drain_does_not_kill_the_process(
        tmp_path: Path) -> None:
    """The multi-worker entrypoint signals each worker twice, and an operator or supervisor
    may repeat a SIGTERM: once the first had been taken, the handler was back to the default,
    so the second killed the process mid-drain (status -15): live calls cut without their
    goodbye, the write-behind queue lost, no final line."""
    identity = Identity()
    with trio.fail_after(60):
        async with serve_process(tmp_path, DRAIN_TIMEOUT_S="1.5", END_GRACE_S="5") as server:
            async with open_call(server.url, auth_token=AUTH_TOKEN, identity=identity) as call:
                await call.say("what are your hours?")
                assert (await call.read_reply()).text.startswith("We are open")
                server.process.send_signal(signal.SIGTERM)
                await server.wait_log("draining")
                server.process.send_signal(signal.SIGTERM)
                await server.wait_log("signal received again: already draining")
                goodbye = await call.read_reply()
                assert "call back in a minute" in goodbye.text
            assert await server.process.wait() == 0
            drained = await server.wait_log("drained")
            await server.wait_log("server stopped")
    assert drained["flushed"] is True


async def test_ctrl_c_drains_the_same_and_exits_130(tmp_path: Path) -> None:
    """A Ctrl-C at the terminal running ``voiceagent serve`` exited 0, as if the service had
    finished; a shell reports a command SIGINT stopped as 130, as the other commands (and
    this one, during its imports) exit. SIGTERM, the stop ECS and docker ask for, stays 0."""
    with trio.fail_after(60):
        async with serve_process(tmp_path, DRAIN_TIMEOUT_S="1.5", END_GRACE_S="5") as server:
            async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                await call.say("what are your hours?")
                assert (await call.read_reply()).text.startswith("We are open")
                server.process.send_signal(signal.SIGINT)
                await server.wait_log("draining")
                goodbye = await call.read_reply()
                assert "call back in a minute" in goodbye.text
            assert await server.process.wait() == 130
            drained = await server.wait_log("drained")
            stopped = await server.wait_log("server stopped")
    assert drained["flushed"] is True
    assert stopped["exit_code"] == 130


async def _twiml_status_and_body(base: str) -> str:
    from voiceagent.app.caller import post_form
    form = {"CallSid": "CA" + "9" * 32, "From": "+15555550100", "To": "+15555550199"}
    return await post_form(base + "/twiml", form, AUTH_TOKEN)


def bulk_config(folder: Path) -> Path:
    """A use case that streams megabytes at full speed, made here rather than committed."""
    (folder / "usecases").mkdir(parents=True)
    words = " ".join(f"w{n}" for n in range(50_000))      # ~1.5 MB of frames, <400 KB item
    (folder / "usecases" / "bulk.yaml").write_text(json.dumps({
        "name": "bulkUseCase", "prompt": "You read long lists.",
        "scripted": {"first_token_delay_ms": 0, "token_delay_ms": 0, "fallback": words}}))
    return folder


async def test_a_peer_that_stopped_reading_cannot_hold_a_deploy(tmp_path: Path) -> None:
    identity = Identity()
    with trio.fail_after(60):
        async with serve_process(tmp_path, bulk_config(tmp_path / "config"),
                                 STACK_USE_CASE="bulkUseCase", DRAIN_TIMEOUT_S="0.5",
                                 END_GRACE_S="1") as server:
            async with open_call(server.url, auth_token=AUTH_TOKEN, identity=identity) as call:
                await call.say("read me everything")
                first = await call.receive()              # then stop reading
                assert first is not None
                # the drain must find the send stuck, not a reply still filling buffers
                await until_it_waits_to_send(server.process.pid, server.port)
                started = trio.current_time()
                server.process.send_signal(signal.SIGTERM)
                assert await server.process.wait() == 0
                took = trio.current_time() - started
                await server.wait_log("calls stuck at shutdown")
                # the watchdog ended it, not the kernel dropping the peer (DEAD_PEER_S, 30 s)
                await server.wait_log("shutdown stuck on a connection that stopped reading; "
                                      "exiting")
    assert took < 25                   # drain 0.5 + goodbye 1 + hypercorn 2 + watchdog 10
    async with open_sqlite_store(tmp_path / "data" / "voiceagent.db",
                                 limiter=trio.CapacityLimiter(1)) as store:
        items = await store.query(identity.call_sid, "chat::")
    assert [item["chat"]["role"] for item in items][:1] == ["user"]
