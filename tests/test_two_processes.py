"""Two real server processes on one DynamoDB table (moto on 127.0.0.1), as behind a load
balancer: Twilio's webhook lands on process A and the relay socket on process B.

A reaches the table over a slow link (``SlowLink``: every request it sends arrives
``A_STORE_DELAY_S`` late), as a loaded store is: a session item written behind would land
well after A's ``/twiml`` had answered, and a socket sent to B at once would get there first.
The same link makes a socket's last messages on A land after a reconnect's ``/action`` that
the balancer sends to B.

Both processes are ``python -m voiceagent serve`` with STORE=dynamodb and the same WS_URL, the
public relay URL Twilio is given and signs, which here is A's; the test plays the balancer by
sending the socket to B's port with the signature Twilio would compute for WS_URL. The table
is made with ``store init``'s code path and filled with ``voiceagent config load`` first:
with DynamoDB, ``serve`` reads config from the table and never loads config/ itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import trio
from trio_websocket import open_websocket_url

import voiceagent.store.config_records as config_records
import voiceagent.store.records as records
from tests.dynamodb_support import (
    aws_env,
    free_port,
    moto_endpoint,
    raw_client,
    table_name,
)
from tests.server_harness import AUTH_TOKEN, FIXTURE_CONFIG
from voiceagent.app.caller import Identity, RelayCall, RelayTarget, parse_relay_twiml, post_form
from voiceagent.app.session_claims import CLAIM_NONCE
from voiceagent.signature import sign
from voiceagent.store.dynamodb import DynamoDBStore
from voiceagent.usecases import Profile, UseCase

__all__ = ["moto_endpoint"]          # the fixture, imported so pytest finds it here

REPO = Path(__file__).parent.parent
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
POLL_S = 0.02
A_STORE_DELAY_S = 0.15


class SlowLink:
    """A TCP forwarder on 127.0.0.1 that holds each chunk a client sends for ``delay_s``
    before passing it on (the answers come back at once): a store that is slow to take
    writes, which no polite local endpoint is. Threads, as the module's fixture is not async."""

    def __init__(self, upstream: str, delay_s: float) -> None:
        parts = urlsplit(upstream)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._delay_s = delay_s
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._sockets: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return                                  # closed
            server = socket.create_connection(self._upstream)
            self._sockets += [client, server]
            for source, sink, delay in ((client, server, self._delay_s), (server, client, 0.0)):
                thread = threading.Thread(target=self._pump, args=(source, sink, delay),
                                          daemon=True)
                self._threads.append(thread)
                thread.start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, delay_s: float) -> None:
        try:
            while chunk := source.recv(65536):
                time.sleep(delay_s)                     # the link's latency, on purpose
                sink.sendall(chunk)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)   # wakes the blocked accept
        self._listener.close()
        for sock in self._sockets:
            sock.close()
        for thread in self._threads:
            thread.join(timeout=STOP_TIMEOUT_S)


@dataclasses.dataclass
class Servers:
    a_url: str
    b_url: str
    ws_url: str                      # WS_URL of both: what Twilio connects to and signs
    table: str
    endpoint: str
    logs: dict[str, Path]

    def events(self, name: str, call_sid: str) -> list[str]:
        """The JSON log events one process wrote for one call."""
        found = []
        for line in self.logs[name].read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("call_sid") == call_sid:
                found.append(str(entry.get("event")))
        return found


def _env(endpoint: str, tmp_path: Path, table: str, **extra: str) -> dict[str, str]:
    """Everything the process sees: nothing of the developer's environment."""
    return {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO),
            "HOME": str(tmp_path), **aws_env(endpoint, tmp_path), "STORE": "dynamodb",
            "TABLE_NAME": table, "LLM": "scripted", "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
            "HOST": "127.0.0.1", "CONFIG_DIR": str(FIXTURE_CONFIG),
            "STACK_USE_CASE": "testUseCase", "LOG_FORMAT": "json",
            "DATA_DIR": str(tmp_path / "data"),
            # calls here end before the test stops the server: no reason to wait on drains
            # or on hypercorn's ping task (see server_harness.make_settings)
            "DRAIN_TIMEOUT_S": "2", "PING_INTERVAL_S": "0", **extra}


def _wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    until = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < until:
        if process.poll() is not None:
            raise RuntimeError(f"server exited ({process.returncode}): "
                               f"{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.05)
    raise RuntimeError(f"server at {url} not healthy within {START_TIMEOUT_S} s")


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM (a drain) to all at once; a kill for any still there after STOP_TIMEOUT_S."""
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_S)


@pytest.fixture(scope="module")
def servers(moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    tmp_path = tmp_path_factory.mktemp("two-processes")
    table = table_name()
    client = raw_client(moto_endpoint)
    trio.run(DynamoDBStore(table, client, limiter=trio.CapacityLimiter(1)).ensure_table)
    loaded = subprocess.run([sys.executable, "-m", "voiceagent", "config", "load"],
                            env=_env(moto_endpoint, tmp_path, table), cwd=REPO,
                            capture_output=True, text=True, timeout=60, check=False)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.splitlines()[-1].endswith("2 created, 0 updated, 0 unchanged")

    ports = {"a": free_port(), "b": free_port()}
    ws_url = f"ws://127.0.0.1:{ports['a']}/relay"
    logs = {name: tmp_path / f"{name}.log" for name in ports}
    processes: dict[str, subprocess.Popen[bytes]] = {}
    slow = SlowLink(moto_endpoint, A_STORE_DELAY_S)
    endpoints = {"a": slow.url, "b": moto_endpoint}
    try:
        for name, port in ports.items():
            with open(logs[name], "wb") as log:
                processes[name] = subprocess.Popen(
                    [sys.executable, "-m", "voiceagent", "serve"], cwd=REPO,
                    env=_env(endpoints[name], tmp_path, table, PORT=str(port), WS_URL=ws_url),
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        for name, url in urls.items():
            _wait_healthy(url, processes[name], logs[name])
        yield Servers(urls["a"], urls["b"], ws_url, table, moto_endpoint, logs)
    finally:
        _stop(list(processes.values()))
        slow.close()
        client.delete_table(TableName=table)


def _form(identity: Identity) -> dict[str, str]:
    return {"CallSid": identity.call_sid, "AccountSid": identity.account_sid,
            "From": identity.from_number, "To": identity.to_number, "CallStatus": "ringing",
            "Direction": "inbound", "ApiVersion": "2010-04-01"}


@asynccontextmanager
async def _socket_on_b(servers: Servers, target: RelayTarget, identity: Identity,
                       token: str, *, process_url: str | None = None
                       ) -> AsyncIterator[RelayCall]:
    """The relay socket Twilio opens for ``target``, routed to process B (or to the process
    at ``process_url``): the URL and its signature are the public ones, only the port is
    the process's."""
    public = urlsplit(target.url)
    routed = urlunsplit(public._replace(netloc=urlsplit(process_url or servers.b_url).netloc))
    headers = [(b"X-Twilio-Signature", sign(AUTH_TOKEN, target.url).encode())]
    async with open_websocket_url(routed, extra_headers=headers, connect_timeout=10) as ws:
        call = RelayCall(ws, dataclasses.replace(target, parameters={
            "sessionToken": token}), identity)
        await call.setup()
        yield call


async def _item_appears(store: DynamoDBStore, pk: str, sk: str) -> dict[str, Any]:
    """A's write-behind puts the session item moments after /twiml answers."""
    while True:
        item = await store.get(pk, sk)
        if item is not None:
            return item
        await trio.sleep(POLL_S)


async def _claim_lands(store: DynamoDBStore, call_sid: str) -> None:
    """The socket's claim (the session with its token used up) is in the table."""
    while True:
        item = await store.get(call_sid, records.SESSION_SK)
        if item is not None and item["token"] == "":
            return
        await trio.sleep(POLL_S)


async def _messages(store: DynamoDBStore, call_sid: str, count: int) -> list[dict[str, Any]]:
    """The call's chat items once ``count`` have landed (B writes them behind)."""
    while True:
        items = await store.query(call_sid, records.CHAT_PREFIX)
        if len(items) >= count:
            return items
        await trio.sleep(POLL_S)


async def _prepared_on_a(servers: Servers, store: DynamoDBStore,
                         identity: Identity) -> tuple[RelayTarget, dict[str, Any]]:
    twiml = await post_form(servers.a_url + "/twiml", _form(identity), AUTH_TOKEN)
    target = parse_relay_twiml(twiml)
    assert target.url == servers.ws_url
    session = await _item_appears(store, identity.call_sid, records.SESSION_SK)
    assert session["token"] == target.parameters["sessionToken"]
    return target, session


@asynccontextmanager
async def _table(servers: Servers) -> AsyncIterator[DynamoDBStore]:
    store = DynamoDBStore(servers.table, raw_client(servers.endpoint),
                          limiter=trio.CapacityLimiter(2))
    try:
        yield store
    finally:
        await store.aclose()


async def test_b_picks_up_the_session_a_prepared(servers: Servers) -> None:
    identity = Identity(from_number="+15555550123")
    with trio.fail_after(30):
        async with _table(servers) as store:
            target, session = await _prepared_on_a(servers, store, identity)
            assert session["useCase"] == "testUseCase"
            prompt = session["systemPrompt"][0]["text"]
            assert "The caller's name is not known" in prompt       # rendered by A

            # Were B to rebuild the session now, this caller would get another use case.
            other = UseCase(name="otherUseCase", prompt="Other. <<USER_CONTEXT>>",
                            relay={"welcomeGreeting": "Hello from the other use case."})
            await store.put(config_records.use_case_item(other))
            await store.put(config_records.profile_item(Profile(
                phone=identity.from_number, first_name="Grace", use_case=other.name)))

            async with _socket_on_b(servers, target, identity, "not-the-token") as call:
                assert await call.receive() is None        # B knows the real token
                assert call.closed_by_server == 1008

            async with _socket_on_b(servers, target, identity,
                                    target.parameters["sessionToken"]) as call:
                await call.say("what are your hours?")
                reply = await call.read_reply()
                assert reply.text.startswith("We are open from eleven")   # testUseCase's rule
                await call.hang_up()

            items = await _messages(store, identity.call_sid, 3)
            # the same session, its token used up: the socket's claim is written too, with
            # a nonce of its own (``session_claims``)
            claimed = await store.get(identity.call_sid, records.SESSION_SK)
            assert claimed is not None
            assert claimed.pop(CLAIM_NONCE)
            assert claimed == {**session, "token": "", records.SESSION_VERSION.attribute: 1}
    entries = [records.chat_from_item(item) for item in items]
    assert entries[0]["chat"] == {"role": "assistant",
                                  "content": [{"text": "Hello, this is Test Pizza."}]}
    assert entries[0]["meta"]["kind"] == "greeting"
    assert [e["chat"]["role"] for e in entries] == ["assistant", "user", "assistant"]
    assert "session prepared" in servers.events("a", identity.call_sid)
    b_events = servers.events("b", identity.call_sid)
    assert "call rejected" in b_events
    assert servers.events("a", identity.call_sid).count("call ended") == 0


async def test_b_refuses_a_call_whose_session_item_is_missing(servers: Servers) -> None:
    """Without the item a signed /twiml wrote, B cannot know the call: rebuilding it from the
    socket's own setup would let any captured upgrade open any call."""
    identity = Identity(from_number="+15555550111")
    with trio.fail_after(30):
        async with _table(servers) as store:
            target, _ = await _prepared_on_a(servers, store, identity)
            await store.delete(identity.call_sid, records.SESSION_SK)
            async with _socket_on_b(servers, target, identity,
                                    target.parameters["sessionToken"]) as call:
                assert await call.receive() is None
                assert call.closed_by_server == 1008
            assert await store.query(identity.call_sid, "chat::") == []
    assert "call rejected" in servers.events("b", identity.call_sid)


async def test_b_serves_a_socket_sent_to_it_the_moment_a_answered(servers: Servers) -> None:
    """The balancer sends the socket to B as soon as A's /twiml answered. A's link to the
    store is slow, so behind its queue the session item came too late (at 1000 calls over
    two processes, 290 calls were refused); A now writes it before it answers, and B finds
    it at its first read."""
    identity = Identity(from_number="+15555550122")
    with trio.fail_after(30):
        twiml = await post_form(servers.a_url + "/twiml", _form(identity), AUTH_TOKEN)
        target = parse_relay_twiml(twiml)
        async with _socket_on_b(servers, target, identity,
                                target.parameters["sessionToken"]) as call:
            await call.say("what are your hours?")
            reply = await call.read_reply()
            assert reply.text.startswith("We are open from eleven")
            await call.hang_up()
    assert "session prepared" in servers.events("a", identity.call_sid)
    assert "session found in the store after waiting" not in servers.events(
        "b", identity.call_sid)
    assert "call rejected" not in servers.events("b", identity.call_sid)


async def test_a_reconnect_answered_by_b_waits_for_the_last_messages_of_a_s_socket(
        servers: Servers) -> None:
    """The relay session on A fails right after a turn; Twilio's ``/action`` reaches B at
    once, while A's slow link still carries that turn's messages. B answers only once A's
    "written" mark (queued behind them) is in the table, so the socket that resumes the call,
    here on B, reads the whole conversation."""
    identity = Identity(from_number="+15555550133")
    call_sid = identity.call_sid
    with trio.fail_after(30):
        async with _table(servers) as store:
            target, _ = await _prepared_on_a(servers, store, identity)
            token = target.parameters["sessionToken"]
            async with _socket_on_b(servers, target, identity, token,
                                    process_url=servers.a_url) as call:
                await _claim_lands(store, call_sid)     # a call going on a while
                await call.say("what are your hours?")
                assert (await call.read_reply()).text.startswith("We are open from eleven")
                await call.hang_up()                    # the relay session fails here
            answer = await post_form(servers.b_url + "/action", {
                "CallSid": call_sid, "SessionId": call.session_id, "SessionStatus": "failed",
                "CallStatus": "in-progress", "ErrorCode": "64105"}, AUTH_TOKEN)
            saved = await store.query(call_sid, records.CHAT_PREFIX)    # the moment B answered
            assert [records.chat_from_item(i)["chat"]["role"] for i in saved] == [
                "assistant", "user", "assistant"]
            assert await store.get(call_sid, records.socket_mark_sk(
                records.SOCKET_WRITTEN_PREFIX, 0)) is not None
            again = parse_relay_twiml(answer)
            async with _socket_on_b(servers, again, identity,
                                    again.parameters["sessionToken"]) as call:
                await call.say("where are you?")
                await call.read_reply()
                await call.hang_up()
            resumed = await _messages(store, call_sid, 5)
    assert [records.chat_from_item(i)["chat"]["role"] for i in resumed] == [
        "assistant", "user", "assistant", "user", "assistant"]          # no second greeting
    b_events = servers.events("b", call_sid)
    assert "the previous socket's messages found in the store after waiting" in b_events
    assert "call rejected" not in b_events


async def test_a_call_whose_relay_keeps_failing_is_reconnected_three_times_across_tasks(
        servers: Servers) -> None:
    """The limit on reconnects is the call's, not a process's: Twilio's ``/action`` after
    each failure lands on A, then B, then A..., and the fourth one hangs up. Counted per
    process, each would have allowed three (six in all)."""
    identity = Identity(from_number="+15555550144")
    failed = {"CallSid": identity.call_sid, "SessionStatus": "failed",
              "CallStatus": "in-progress", "ErrorCode": "64105"}
    with trio.fail_after(30):
        await post_form(servers.a_url + "/twiml", _form(identity), AUTH_TOKEN)
        answers = [await post_form(url + "/action", {**failed, "SessionId": f"VX{n}"},
                                   AUTH_TOKEN)
                   for n, url in enumerate((servers.a_url, servers.b_url) * 2)]
    assert ["<ConversationRelay" in answer for answer in answers] == [True, True, True, False]
    assert "<Hangup />" in answers[3]
    assert "reconnect refused: the call's relay session keeps failing" in servers.events(
        "b", identity.call_sid)


async def test_a_reconnect_answered_by_the_socket_s_own_process_while_it_still_flushes(
        servers: Servers) -> None:
    """Twilio's ``/action`` comes the moment the relay session fails, and the balancer may
    send it to the process that served the socket, which is still writing the call's last
    messages over its slow link. It must reconnect the call, not hang up on it."""
    identity = Identity(from_number="+15555550155")
    call_sid = identity.call_sid
    with trio.fail_after(30):
        async with _table(servers) as store:
            target, _ = await _prepared_on_a(servers, store, identity)
            async with _socket_on_b(servers, target, identity,
                                    target.parameters["sessionToken"],
                                    process_url=servers.a_url) as call:
                await _claim_lands(store, call_sid)
                await call.say("what are your hours?")
                assert (await call.read_reply()).text.startswith("We are open from eleven")
                await call.hang_up()
            answer = await post_form(servers.a_url + "/action", {
                "CallSid": call_sid, "SessionId": call.session_id, "SessionStatus": "failed",
                "CallStatus": "in-progress", "ErrorCode": "64105"}, AUTH_TOKEN)
            assert "<ConversationRelay" in answer, answer
            saved = await store.query(call_sid, records.CHAT_PREFIX)
    assert [records.chat_from_item(i)["chat"]["role"] for i in saved] == [
        "assistant", "user", "assistant"]
