"""The stall limits (first-event timeout, whole-stream deadline) with the parts production
has between us and Bedrock: TLS with a private CA (AWS_CA_BUNDLE) and a real HTTP CONNECT
proxy process, on the real clock, limits shortened through the constructor.

``test_bedrock_stalls`` proves the timing on the virtual clock against the endpoint alone;
what only real parts show is whether the connection given up on is really gone: the proxy
logs the tunnel's close, the endpoint sees it end, this process holds no socket for it, and
no limiter token or pool connection stays behind. A half-open connection (the proxy
SIGSTOPped: the kernel acknowledges, nothing answers, nothing closes) is the case a polite
fake never makes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from tests.fake_bedrock import (
    FakeBedrock,
    RecordedRequest,
    Reply,
    Stall,
    message_end,
    message_start,
    stream_reply,
    text_events,
    text_reply,
)
from tests.proc_sockets import socket_descriptors, tcp_rows
from tests.proxy_support import RunningProxy, running_proxy
from voiceagent.errors import ModelStreamFailed, ModelUnavailable
from voiceagent.llm.base import InferenceConfig, LLMEvent, LLMRequest, StreamEnd, TextDelta
from voiceagent.llm.bedrock import BedrockLLM

FIRST_EVENT_S = 0.5         # a reply through the proxy comes well inside it on a busy machine
READ_S = 1.0
CONNECT_S = 0.5
RETRY_BUDGET_S = 0.25       # shorter than the first-event timeout, as in production (2.5, 3)
# The real clock, since a proxy process is in the path: a wait is bounded below by its limit
# (a limit cannot end sooner, however loaded the machine) and above only by LATE_S past it,
# which a limit 10x too long, or one that never fires, crosses and a busy machine does not.
# Which limit ended a wait, and on which connection the next request went, are events.
LATE_S = 2.0
NEVER_S = 3600.0        # a reply's headers delayed past every limit: the request was lost

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def fake(fake_bedrock_tls: FakeBedrock) -> FakeBedrock:
    return fake_bedrock_tls


@pytest.fixture
async def proxy(fake: FakeBedrock, monkeypatch: pytest.MonkeyPatch
                ) -> AsyncIterator[RunningProxy]:
    async with running_proxy() as running:
        monkeypatch.setenv("HTTPS_PROXY", running.url)
        yield running


@asynccontextmanager
async def short_limits(**options: Any) -> AsyncIterator[BedrockLLM]:
    backend = BedrockLLM(region="us-east-1", **{
        "first_event_timeout_s": FIRST_EVENT_S, "read_timeout_s": READ_S,
        "connect_timeout_s": CONNECT_S, "retry_budget_s": RETRY_BUDGET_S,
        "retry_base_delay_s": 0.01, **options})
    try:
        yield backend
    finally:
        await backend.aclose()


def request(max_tokens: int = 300) -> LLMRequest:
    return LLMRequest(call_sid="CA0123456789abcdef0123456789abcdef", use_case="stalls",
                      model_id="us.amazon.nova-lite-v1:0", system=("You are a host.",),
                      messages=({"role": "user", "content": [{"text": "Open?"}]},),
                      inference=InferenceConfig(max_tokens=max_tokens))


async def collect(llm: BedrockLLM, into: list[LLMEvent] | None = None,
                  max_tokens: int = 300) -> list[LLMEvent]:
    events = [] if into is None else into
    async with llm.stream(request(max_tokens)) as stream:
        async for item in stream:
            events.append(item)
    return events


def texts(events: Sequence[LLMEvent]) -> list[str]:
    return [e.text for e in events if isinstance(e, TextDelta)]


async def answered_twice_at_once(llm: BedrockLLM, fake: FakeBedrock) -> None:
    """Two turns at the same time: two tunnels, both kept in the pool afterwards."""
    fake.push(text_reply(["One."], headers_delay_s=0.05), text_reply(["Two."]))
    results: list[list[LLMEvent]] = [[], []]
    async with trio.open_nursery() as nursery:
        for into in results:
            nursery.start_soon(collect, llm, into)
    assert sorted(texts(r)[0] for r in results) == ["One.", "Two."]


async def answered_twice_at_once_again(llm: BedrockLLM) -> None:
    """Two turns at the same time once every old tunnel stalls: both answered at once."""
    results: list[list[LLMEvent]] = [[], []]
    async with trio.open_nursery() as nursery:
        for into in results:
            nursery.start_soon(collect, llm, into)
    assert [texts(r) for r in results] == [["We open at nine."]] * 2


def sockets_to(port: int) -> int:
    """This process's open TCP sockets whose peer is ``port`` on loopback."""
    ours = socket_descriptors()
    return sum(row.remote_port == port and row.inode in ours for row in tcp_rows())


def pooled(llm: BedrockLLM) -> int:
    """Connections kept alive in the backend's pool."""
    setup = llm._setup
    assert setup is not None
    return setup.pool.idle


def assert_nothing_held(llm: BedrockLLM) -> None:
    stats = llm.statistics()
    assert llm.limiter.borrowed_tokens == 0
    assert (stats.attempts_open, stats.streams_open) == (0, 0)


# ---------------------------------------------------------------- a stalled start

async def test_a_stall_before_the_first_event_closes_its_tunnel_and_a_new_one_answers(
        fake: FakeBedrock, proxy: RunningProxy) -> None:
    """The kept-alive tunnel carries the request; the endpoint answers the headers and
    ``messageStart`` and nothing more. At the first-event timeout the attempt is closed: the
    proxy logs the tunnel closed, the endpoint sees its connection end, and this process
    holds no socket for it; the retry opens a second tunnel, which answers and is kept."""
    async with short_limits() as llm:
        fake.push(text_reply(["Warm."]), Stall(frames=(message_start(),)),
                  text_reply(["We open at nine."]))
        with trio.fail_after(10):
            assert texts(await collect(llm)) == ["Warm."]
            assert sockets_to(proxy.port) == 1          # kept in the pool
            started = trio.current_time()
            events = await collect(llm)
            waited = trio.current_time() - started
            await fake.requests[1].connection.closed.wait()
            assert await proxy.wait_tunnels(1) == [f"localhost:{fake.port}"]
        assert texts(events) == ["We open at nine."]
        assert isinstance(events[-1], StreamEnd)
        assert FIRST_EVENT_S <= waited < FIRST_EVENT_S + LATE_S
        assert fake.requests[1].connection.id == fake.requests[0].connection.id
        assert fake.requests[2].connection.id != fake.requests[1].connection.id
        assert [r.outcome for r in fake.requests] == ["complete", "client_closed", "complete"]
        assert llm.statistics().errors_by_code == {"FirstEventTimeout": 1}
        assert (llm.statistics().connections_opened, pooled(llm)) == (2, 1)
        assert sockets_to(proxy.port) == 1              # the second tunnel, kept
        assert_nothing_held(llm)


async def test_a_stalled_start_is_tried_on_a_new_tunnel_and_the_quiet_kept_ones_are_closed(
        fake: FakeBedrock, proxy: RunningProxy) -> None:
    """The stall is the path's (a stuck host, a flow a middlebox dropped): every connection
    kept alive from before it stalls alike, a new one answers. With two tunnels kept, the
    retry took the other kept-alive one, stalled on it for the read timeout, and the caller
    got the apology; it opens a new tunnel. And the other kept one, quiet since before the
    stalled request, is closed at the stall: it stayed, and the next two turns at once took
    it for one of them, which stalled again (the first-event timeout, then a new tunnel)."""
    async with short_limits() as llm:
        with trio.fail_after(10):
            await answered_twice_at_once(llm, fake)
            stuck = {c.id for c in fake.connections}

            def stalls_on_old_connections(request: RecordedRequest) -> Reply:
                if request.connection.id in stuck:
                    return Stall()
                return text_reply(["We open at nine."])

            fake.responder = stalls_on_old_connections
            started = trio.current_time()
            events = await collect(llm)
            waited = trio.current_time() - started
            assert (llm.statistics().connections_dropped, pooled(llm)) == (1, 1)
            assert sockets_to(proxy.port) == 1
            for connection in fake.connections[:2]:
                await connection.closed.wait()
            await answered_twice_at_once_again(llm)
        assert texts(events) == ["We open at nine."]
        assert FIRST_EVENT_S <= waited < FIRST_EVENT_S + LATE_S
        assert all(r.connection.id not in stuck for r in fake.requests[3:])
        assert llm.statistics().errors_by_code == {"FirstEventTimeout": 1}
        assert (llm.statistics().connections_opened, pooled(llm)) == (4, 2)
        assert sockets_to(proxy.port) == 2
        assert_nothing_held(llm)


async def test_a_stall_mid_reply_closes_the_quiet_kept_tunnels_so_the_next_turn_is_answered(
        fake: FakeBedrock, proxy: RunningProxy) -> None:
    """A reply goes silent after its first words (the path died under it): no retry after
    words, the caller hears the apology at the read timeout. The other kept tunnel has been
    quiet as long and shares the path: it stayed in the pool, the next turn took it, and
    that turn stalled as well (the first-event timeout, then a new tunnel). It is closed at
    the stall, and the next turn opens a new tunnel and is answered at once."""
    async with short_limits() as llm:
        with trio.fail_after(10):
            await answered_twice_at_once(llm, fake)
            stuck = {c.id for c in fake.connections}

            def dies_on_old_connections(request: RecordedRequest) -> Reply:
                if request.connection.id in stuck:
                    return Stall(frames=(message_start(), *text_events([" We"], stop=False)))
                return text_reply(["We open at nine."])

            fake.responder = dies_on_old_connections
            said: list[LLMEvent] = []
            with pytest.raises(ModelStreamFailed) as failed:
                await collect(llm, said)
            after = await collect(llm)
            assert texts(after) == ["We open at nine."]
            assert llm.statistics().errors_by_code == {"ReadTimeout": 1}
            for connection in fake.connections[:2]:
                await connection.closed.wait()
            assert await proxy.wait_tunnels(2) == [f"localhost:{fake.port}"] * 2
        assert (failed.value.code, failed.value.after_tokens) == ("ReadTimeout", True)
        assert texts(said) == [" We"]
        assert len(fake.requests) == 4          # answered at once: one request, on a new tunnel
        assert fake.requests[3].connection.id not in stuck
        stats = llm.statistics()
        assert (stats.connections_opened, stats.connections_dropped, pooled(llm)) == (3, 1, 1)
        assert sockets_to(proxy.port) == 1
        assert_nothing_held(llm)


async def test_a_tunnel_that_answered_while_another_stalled_is_kept(
        fake: FakeBedrock, proxy: RunningProxy) -> None:
    """Only the tunnels quiet since the stalled request went out are closed: one that
    carried a whole reply while it stalled has shown its path works (a lost request, one
    stuck host), and closing it would cost a later turn a handshake for nothing.

    The stalled request gets no headers before the client gives up. Headers are a sign of
    life too (``heard_at``): under load, headers sent at once reached the client after the
    other tunnel's whole reply, so that tunnel was the quieter one and was closed (CI, once
    in dozens of runs). The request's own stamp comes before ``wait_requests`` wakes: its
    task stamps ``heard_at`` in the batch after the bytes leave, and the endpoint sees them
    only after the proxy's hop and a later poll of this loop."""
    async with short_limits() as llm:
        with trio.fail_after(10):
            await answered_twice_at_once(llm, fake)
            stalled = len(fake.requests)
            lost = Stall(headers_delay_s=NEVER_S)
            fake.responder = lambda request: (lost if request.index == stalled
                                              else text_reply(["Yes."]))
            results: list[list[LLMEvent]] = [[], []]
            async with trio.open_nursery() as nursery:
                nursery.start_soon(collect, llm, results[0])
                await fake.wait_requests(stalled + 1)
                nursery.start_soon(collect, llm, results[1])
        assert [texts(r) for r in results] == [["Yes."], ["Yes."]]
        assert fake.requests[stalled + 1].connection.id in {c.id for c in fake.connections[:2]}
        stats = llm.statistics()
        assert stats.errors_by_code == {"FirstEventTimeout": 1}
        assert (stats.connections_opened, stats.connections_dropped, pooled(llm)) == (3, 0, 2)
        assert_nothing_held(llm)


async def test_a_barge_in_into_dead_air_closes_the_quiet_kept_tunnels_as_a_stall_would(
        fake: FakeBedrock, proxy: RunningProxy) -> None:
    """The path of both kept tunnels is dead; the caller, in silence, speaks before the
    first-event timeout (1 s here) and the turn is cancelled at 0.75 s. The other kept
    tunnel stayed, and the caller's next turn took it and stalled for the whole timeout
    before a new tunnel answered. It is closed at the barge-in, as at a stall, and the next
    turn opens a new tunnel and is answered at once."""
    async with short_limits(first_event_timeout_s=1.0, read_timeout_s=2.0) as llm:
        with trio.fail_after(10):
            await answered_twice_at_once(llm, fake)
            stuck = {c.id for c in fake.connections}
            fake.responder = lambda request: (Stall() if request.connection.id in stuck
                                              else text_reply(["We open at nine."]))
            with trio.move_on_after(0.75) as barge_in:
                await collect(llm)
            after = await collect(llm)
            for connection in fake.connections[:2]:
                await connection.closed.wait()
            assert await proxy.wait_tunnels(2) == [f"localhost:{fake.port}"] * 2
        assert barge_in.cancelled_caught
        assert texts(after) == ["We open at nine."]
        assert len(fake.requests) == 4          # answered at once: one request, on a new tunnel
        assert fake.requests[3].connection.id not in stuck
        stats = llm.statistics()
        assert stats.errors_by_code == {}
        assert (stats.connections_opened, stats.connections_dropped, pooled(llm)) == (3, 1, 1)
        assert sockets_to(proxy.port) == 1
        assert_nothing_held(llm)


# ---------------------------------------------------------------- a reply too slow

async def test_a_reply_dripping_past_its_deadline_closes_its_tunnel_and_the_next_turn_reuses(
        fake: FakeBedrock, proxy: RunningProxy) -> None:
    """Events 0.2 s apart, inside the silence allowed after words (the first-event timeout),
    for a reply of maxTokens 2: the stream is due whole at 0.5 + 2 / 4 = 1 s and ends there
    as ReplyTooSlow after its words. Its tunnel is closed (never back in the pool); the next
    turn takes the other kept one."""
    async with short_limits() as llm:
        with trio.fail_after(10):
            await answered_twice_at_once(llm, fake)
            fake.push(stream_reply(message_start(), text_events(
                [f" w{n}" for n in range(20)], gap_s=0.2, first_delay_s=0.05), message_end()),
                      text_reply(["Next."]))
            said: list[LLMEvent] = []
            started = trio.current_time()
            with pytest.raises(ModelStreamFailed) as failed:
                await collect(llm, said, max_tokens=2)
            waited = trio.current_time() - started
            await fake.requests[2].connection.closed.wait()
            assert await proxy.wait_tunnels(1) == [f"localhost:{fake.port}"]
            assert sockets_to(proxy.port) == 1
            after = await collect(llm)
        limit_s = FIRST_EVENT_S + 2 / 4
        assert failed.value.code == "ReplyTooSlow"
        assert failed.value.after_tokens
        # sent 0.05, 0.25, ... 0.85 s after the request came, 1.05 s past the limit; a busy
        # machine only delays them, so fewer may have come, never more
        assert texts(said) == [f" w{n}" for n in range(len(said))]
        assert 1 <= len(said) <= 5
        assert limit_s <= waited < limit_s + LATE_S
        assert texts(after) == ["Next."]
        kept = {fake.requests[0].connection.id, fake.requests[1].connection.id}
        assert fake.requests[3].connection.id in kept - {fake.requests[2].connection.id}
        assert llm.statistics().errors_by_code == {"ReplyTooSlow": 1}
        assert (llm.statistics().connections_opened, llm.statistics().retries) == (2, 0)
        assert sockets_to(proxy.port) == 1
        assert_nothing_held(llm)


# ---------------------------------------------------------------- half-open

async def test_a_half_open_tunnel_is_given_up_at_the_first_event_timeout_and_holds_nothing(
        fake: FakeBedrock, proxy: RunningProxy) -> None:
    """The proxy is stopped: the kept tunnel takes the request (the kernel acknowledges it)
    and nothing comes back, nor a close. At the first-event timeout it is closed; the retry's
    CONNECT is accepted by the kernel and never answered (ConnectTimeout), past the budget
    no more. The caller gets the model-error path, and nothing stays: no limiter token, no
    pool connection, no socket. Once the proxy runs again the endpoint sees the old
    connection end and the next turn opens a new tunnel."""
    async with short_limits() as llm:
        fake.push(text_reply(["Warm."]))
        with trio.fail_after(10):
            assert texts(await collect(llm)) == ["Warm."]
            # once the proxy runs again it may deliver the stalled request: answered alike
            fake.responder = lambda request: text_reply(["Back."])
            with proxy.stopped():
                started = trio.current_time()
                with pytest.raises(ModelUnavailable) as failed:
                    await collect(llm)
                waited = trio.current_time() - started
                assert_nothing_held(llm)
                assert pooled(llm) == 0
                assert sockets_to(proxy.port) == 0
            await fake.connections[0].closed.wait()
            after = await collect(llm)
        assert failed.value.code == "ConnectTimeout"
        assert llm.statistics().errors_by_code == {"FirstEventTimeout": 1, "ConnectTimeout": 1}
        assert FIRST_EVENT_S <= waited < FIRST_EVENT_S + CONNECT_S + LATE_S
        assert texts(after) == ["Back."]
        assert fake.requests[-1].connection.id != fake.connections[0].id
        assert_nothing_held(llm)
