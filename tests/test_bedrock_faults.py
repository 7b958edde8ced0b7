"""The Bedrock backend against an endpoint that misbehaves on purpose, over TLS with a private
CA (trusted through AWS_CA_BUNDLE, as a deployment behind an inspecting proxy would be), and
through a real HTTP CONNECT proxy process.

Every fault must come out as an ``LLMError`` (never a library exception): retried while no
content reached the caller, ``ModelStreamFailed(after_tokens=True)`` after. A connection that
carried a failed or cancelled exchange never carries another.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.aws_credentials_server import running_credentials_server
from tests.fake_bedrock import (
    FakeBedrock,
    Hangup,
    HangupBeforeHeaders,
    Stall,
    exception,
    message_end,
    message_start,
    stream_reply,
    text_events,
    text_reply,
    tool_events,
)
from tests.proxy_support import running_proxy
from voiceagent.errors import ModelStreamFailed, ModelThrottled, ModelUnavailable
from voiceagent.llm.base import LLMEvent, LLMRequest, StreamEnd, TextDelta, ToolUseRequest
from voiceagent.llm.bedrock import BedrockLLM
from voiceagent.retry_quota import RetryBudget

CALL_SID = "CA0123456789abcdef0123456789abcdef"


@pytest.fixture
def fake(fake_bedrock_tls: FakeBedrock) -> FakeBedrock:
    return fake_bedrock_tls


@pytest.fixture
async def llm(fake: FakeBedrock) -> AsyncIterator[BedrockLLM]:
    backend = BedrockLLM(region="us-east-1", retry_base_delay_s=0.01, read_timeout_s=0.5)
    yield backend
    await backend.aclose()


@asynccontextmanager
async def new_llm(**options: Any) -> AsyncIterator[BedrockLLM]:
    """A client made now, for a test that changes the environment first (the ``llm``
    fixture's was made before the test ran); closed on exit, still there to read after."""
    backend = BedrockLLM(region="us-east-1", **{"retry_base_delay_s": 0.01, **options})
    try:
        yield backend
    finally:
        await backend.aclose()


def request(text: str = "When do you open?") -> LLMRequest:
    return LLMRequest(call_sid=CALL_SID, use_case="testUseCase", model_id="us.amazon.nova-"
                      "lite-v1:0", system=("You are a host.",),
                      messages=({"role": "user", "content": [{"text": text}]},))


def reply_cut(deltas: Sequence[str], after: int, *, reset: bool) -> Hangup:
    """message_start, the deltas, then the connection goes after ``after`` frames."""
    frames = stream_reply(message_start(), text_events(deltas, gap_s=0.01)).frames
    return Hangup(after_frames=after, reset=reset, frames=frames)


async def collect(llm: BedrockLLM, text: str = "When do you open?",
                  into: list[LLMEvent] | None = None) -> list[LLMEvent]:
    events = [] if into is None else into
    async with llm.stream(request(text)) as stream:
        async for item in stream:
            events.append(item)
    return events


def texts(events: Sequence[LLMEvent]) -> list[str]:
    return [e.text for e in events if isinstance(e, TextDelta)]


# ---------------------------------------------------------------- faults mid-body

@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
async def test_a_connection_lost_mid_reply_fails_after_tokens_and_the_next_call_works(
        fake: FakeBedrock, llm: BedrockLLM, reset: bool) -> None:
    fake.push(reply_cut(["We open", " at", " eleven"], after=3, reset=reset),
              text_reply(["Fine."]))
    received: list[LLMEvent] = []
    with trio.fail_after(10):
        with pytest.raises(ModelStreamFailed) as failed:
            await collect(llm, into=received)
        after = await collect(llm)
    assert failed.value.after_tokens
    assert failed.value.code == "ConnectionClosed"
    assert texts(received) == ["We open", " at"]
    assert texts(after) == ["Fine."]
    assert fake.requests[0].connection.id != fake.requests[1].connection.id
    assert fake.violations == []


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
async def test_a_connection_lost_before_the_headers_is_retried(
        fake: FakeBedrock, llm: BedrockLLM, reset: bool) -> None:
    fake.push(HangupBeforeHeaders(reset=reset), text_reply(["We open", " at eleven."]))
    with trio.fail_after(10):
        events = await collect(llm)
    assert texts(events) == ["We open", " at eleven."]
    assert llm.statistics().errors_by_code == {"ConnectionClosed": 1}
    assert llm.statistics().retries == 1


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
async def test_a_kept_alive_connection_lost_before_the_headers_sends_the_whole_request_again(
        fake: FakeBedrock, llm: BedrockLLM, reset: bool) -> None:
    """The endpoint closes a kept-alive connection as our request reaches it (its idle
    timeout, racing our reuse): the request never ran, and goes out again on a new
    connection as it was, body and signature, with no retry counted. The attempt lets its
    copy of the request go only once the answer has begun."""
    fake.push(text_reply(["One."]), HangupBeforeHeaders(reset=reset), text_reply(["Two."]))
    with trio.fail_after(10):
        await collect(llm)
        events = await collect(llm)
    assert texts(events) == ["Two."]
    first, dropped, sent_again = fake.requests
    assert dropped.connection.id == first.connection.id
    assert sent_again.connection.id != first.connection.id
    assert sent_again.body == dropped.body == first.body
    assert sent_again.access_key is not None
    assert (llm.statistics().retries, llm.statistics().errors_by_code) == (0, {})
    assert fake.violations == []


async def test_a_stall_mid_reply_ends_at_the_read_timeout(
        fake: FakeBedrock, llm: BedrockLLM) -> None:
    fake.push(Stall(frames=stream_reply(message_start(), text_events(["We open"],
                                                                     stop=False)).frames))
    received: list[LLMEvent] = []
    with trio.fail_after(10):
        with pytest.raises(ModelStreamFailed) as failed:
            await collect(llm, into=received)
        await fake.requests[0].done.wait()          # the endpoint saw us close it
    assert failed.value.code == "ReadTimeout"
    assert failed.value.after_tokens
    assert texts(received) == ["We open"]


async def test_an_error_event_mid_stream_over_tls_is_still_an_llm_error(
        fake: FakeBedrock, llm: BedrockLLM) -> None:
    fake.push(stream_reply(message_start(), text_events(["We"], stop=False),
                           exception("modelStreamErrorException", delay_s=0.01)))
    with trio.fail_after(10), pytest.raises(ModelStreamFailed) as failed:
        await collect(llm)
    assert failed.value.code == "ModelStreamErrorException"


# ---------------------------------------------------------------- held text over TLS

async def test_events_in_their_own_tls_records_arriving_at_once_are_taken_at_once(
        fake: FakeBedrock, llm: BedrockLLM) -> None:
    """39 events, each its own TLS record, sent back to back while the reader holds text:
    one ``take_ready`` must hand over all of them, from the socket, the TLS layer and the
    parser, without waiting for a next segment that never comes."""
    deltas = [f" w{n}" for n in range(40)]
    fake.push(stream_reply(message_start(), text_events(deltas[:1]),
                           text_events(deltas[1:], first_delay_s=0.05, index=1),
                           message_end()))
    with trio.fail_after(10):
        async with llm.stream(request()) as events:
            assert await events.receive() == TextDelta(" w0")
            # Sent whole (each send returned): on loopback every byte is in our socket now.
            await fake.requests[0].done.wait()
            batch = await events.take_ready()  # type: ignore[attr-defined]
    assert texts(batch) == deltas[1:]
    assert isinstance(batch[-1], StreamEnd)


# ---------------------------------------------------------------- connecting

async def test_an_untrusted_certificate_is_refused_and_says_what_to_set(
        fake: FakeBedrock, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import trustme

    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    monkeypatch.setenv("AWS_CA_BUNDLE", str(other))
    async with new_llm() as llm:
        with trio.fail_after(10), pytest.raises(ModelUnavailable) as caught:
            await collect(llm)
    assert caught.value.code == "TLSCertificateError"
    assert "AWS_CA_BUNDLE" in str(caught.value)
    assert llm.statistics().retries == 0            # a certificate does not fix itself
    assert fake.requests == []


async def test_a_refused_connection_is_retried_then_unavailable(
        aws_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:                  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", f"http://127.0.0.1:{port}")
    async with new_llm() as llm:
        with trio.fail_after(10), pytest.raises(ModelUnavailable) as caught:
            await collect(llm)
    assert caught.value.code == "ConnectionRefused"
    assert llm.statistics().errors_by_code == {"ConnectionRefused": 3}


async def test_a_name_that_does_not_resolve_is_retried_then_unavailable(
        fake: FakeBedrock, monkeypatch: pytest.MonkeyPatch) -> None:
    """DNS failure, without asking any real resolver: trio's own resolver hook answers."""

    class NoSuchHost(trio.abc.HostnameResolver):
        async def getaddrinfo(self, host: Any, port: Any, family: int = 0, type: int = 0,
                              proto: int = 0, flags: int = 0) -> Any:
            await trio.lowlevel.checkpoint()
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

        async def getnameinfo(self, sockaddr: Any, flags: int) -> Any:
            raise NotImplementedError

    monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME",
                       f"https://bedrock.example.invalid:{fake.port}")
    previous = trio.socket.set_custom_hostname_resolver(NoSuchHost())
    try:
        async with new_llm() as llm:
            with trio.fail_after(10), pytest.raises(ModelUnavailable) as caught:
                await collect(llm)
    finally:
        trio.socket.set_custom_hostname_resolver(previous)
    assert caught.value.code == "DNSError"
    assert llm.statistics().retries == 2


# ---------------------------------------------------------------- through a proxy

async def test_through_a_connect_proxy_over_tls_and_a_barge_in_closes_the_upstream(
        fake: FakeBedrock, monkeypatch: pytest.MonkeyPatch) -> None:
    async with running_proxy(basic_auth="agent:s3cret") as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url_with_auth("agent", "s3cret"))
        fake.push(text_reply(["We open", " at eleven."]),
                  stream_reply(message_start(), text_events([f" w{n}" for n in range(50)],
                                                            gap_s=0.05)))
        async with new_llm() as llm:
            with trio.fail_after(15):
                events = await collect(llm)
                async with llm.stream(request()) as stream:
                    assert isinstance(await stream.receive(), TextDelta)
                # left mid-reply: the endpoint sees its connection closed, through the proxy
                await fake.requests[1].connection.closed.wait()
    assert texts(events) == ["We open", " at eleven."]
    assert fake.requests[1].outcome == "client_closed"
    assert fake.requests[1].frames_sent < 20
    assert llm.statistics().cancellations == 1


async def test_a_proxy_that_refuses_is_a_model_error_that_names_the_proxy(
        fake: FakeBedrock, monkeypatch: pytest.MonkeyPatch) -> None:
    async with running_proxy(basic_auth="agent:s3cret") as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url_with_auth("agent", "wrong"))
        async with new_llm() as llm:
            with trio.fail_after(15), pytest.raises(ModelUnavailable) as caught:
                await collect(llm)
    assert caught.value.code == "ProxyRefused"
    assert "407" in str(caught.value)
    assert "HTTPS_PROXY" in str(caught.value)
    assert llm.statistics().retries == 0
    assert fake.requests == []


# ---------------------------------------------------------------- credentials and retries

async def test_credentials_rotated_during_a_call_are_found_anew(
        fake: FakeBedrock, monkeypatch: pytest.MonkeyPatch) -> None:
    """Container credentials (what Fargate gives a task) that the service stops accepting
    before their stated expiry: one refusal, the chain asked again, the call goes on."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    async with running_credentials_server() as credentials:
        monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", credentials.url)
        first = credentials.access_key_id
        fake.accepted_keys = {first}
        fake.push(text_reply(["One."]), text_reply(["Two."]), text_reply(["Three."]))
        async with new_llm() as llm:
            with trio.fail_after(15):
                assert texts(await collect(llm)) == ["One."]
                second = credentials.rotate()
                fake.accepted_keys = {second}
                assert texts(await collect(llm)) == ["Two."]
                assert texts(await collect(llm)) == ["Three."]
    assert [r.access_key for r in fake.requests] == [first, first, second, second]
    assert llm.statistics().errors_by_code == {"ExpiredTokenException": 1}


async def test_credentials_refused_for_good_are_a_credentials_problem_in_the_log(
        fake: FakeBedrock, llm: BedrockLLM, caplog: pytest.LogCaptureFixture) -> None:
    fake.accepted_keys = {"AKIDSOMEONEELSE"}
    with trio.fail_after(10), pytest.raises(ModelUnavailable) as caught:
        await collect(llm)
    assert caught.value.code == "ExpiredTokenException"
    refused = [r for r in caplog.records if r.getMessage() == "bedrock refused our credentials"]
    assert len(refused) == 1
    assert "AWS_PROFILE" in refused[0].what_to_check
    assert not hasattr(refused[0], "history_shape")
    assert len(fake.requests) == 2                  # once, and once after renewing


async def test_sustained_throttling_spends_the_retry_quota_then_stops_retrying(
        fake: FakeBedrock, llm: BedrockLLM) -> None:
    from tests.fake_bedrock import HttpError

    llm.retry_quota = RetryBudget(capacity=12)      # two throttling retries' worth
    fake.responder = lambda request: HttpError(429, "ThrottlingException")
    with trio.fail_after(10):
        for _ in range(3):
            with pytest.raises(ModelThrottled):
                await collect(llm)
    assert llm.statistics().retries == 2
    assert len(fake.requests) == 5
    assert llm.statistics().retry_quota == 2


async def test_credentials_near_expiry_are_refreshed_in_a_thread_before_signing(
        fake: FakeBedrock, monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside botocore's mandatory refresh window (under 10 minutes left) every signature
    fetches credentials first, and a rotation is picked up with no refusal at all. The fetch
    is blocking network I/O and the credentials endpoint is served by this very event loop:
    had it run on the loop, the loop could not have answered it, and the call would fail."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    async with running_credentials_server(expires_in_s=300) as credentials:
        monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", credentials.url)
        fake.push(text_reply(["One."]), text_reply(["Two."]))
        async with new_llm() as llm:
            with trio.fail_after(15):
                assert texts(await collect(llm)) == ["One."]
                fake.accepted_keys = {credentials.rotate()}
                assert texts(await collect(llm)) == ["Two."]
    assert llm.statistics().errors_by_code == {}
    assert fake.requests[-1].access_key in fake.accepted_keys
    assert credentials.requests >= 3                # resolved, then refreshed per signature


async def test_the_profiles_ca_bundle_is_honoured_too(
        fake: FakeBedrock, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``ca_bundle`` in the AWS profile, as botocore reads it, when AWS_CA_BUNDLE is unset."""
    config = tmp_path / "aws-config"
    config.write_text(f"[default]\nca_bundle = {fake.ca_bundle}\n")
    monkeypatch.delenv("AWS_CA_BUNDLE")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    fake.push(text_reply(["Trusted."]))
    async with new_llm() as llm:
        with trio.fail_after(10):
            assert texts(await collect(llm)) == ["Trusted."]
    assert fake.tls_failures == 0


# ------------------------------------------------------------------ whole, then the link goes
# A reply that was whole (its ``messageStop`` arrived) when the connection went: closed or
# reset by a load balancer before the ``metadata`` event or the body's last chunk, or stalled
# there until the read timeout.
#
# The caller has heard the whole answer; an apology after it ("I lost my train of thought.
# Could you say that again?") would ask them to repeat a question that was answered. The reply
# ends as any other (its stop reason, no usage when ``metadata`` was lost), and the connection,
# whose exchange did not finish, is not kept.

WHOLE = stream_reply(message_start(), text_events(["We open", " at nine."]),
                     message_end()).frames          # ..., messageStop, metadata


@pytest.mark.parametrize(("after", "reset"), [(len(WHOLE) - 1, False), (len(WHOLE) - 1, True),
                                              (len(WHOLE), False)],
                         ids=["fin-before-metadata", "rst-before-metadata", "fin-before-end"])
async def test_a_whole_reply_ends_as_one_when_the_connection_goes(
        fake: FakeBedrock, llm: BedrockLLM, after: int, reset: bool) -> None:
    fake.push(Hangup(after_frames=after, reset=reset, frames=WHOLE), text_reply(["Fine."]))
    with trio.fail_after(10):
        events = await collect(llm)
        after_it = await collect(llm)
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["We open", " at nine."]
    assert isinstance(events[-1], StreamEnd)
    assert events[-1].stop_reason == "end_turn"
    assert [type(e) for e in after_it] == [TextDelta, StreamEnd]
    assert fake.requests[0].connection.id != fake.requests[1].connection.id
    assert llm.statistics().retries == 0


async def test_a_tool_call_whole_before_a_stall_is_made(fake: FakeBedrock,
                                                        llm: BedrockLLM) -> None:
    fake.push(Stall(frames=stream_reply(
        message_start(), tool_events(0, "tooluse_1", "lookup", ['{"day":', ' "monday"}']),
        message_end("tool_use")[:1]).frames))
    with trio.fail_after(10):
        events = await collect(llm)
        await fake.requests[0].done.wait()          # the endpoint saw us close it
    assert events == [ToolUseRequest("tooluse_1", "lookup", {"day": "monday"}),
                      StreamEnd("tool_use", usage=None, first_token_s=events[-1].first_token_s)]
