"""A local Bedrock Runtime endpoint that speaks the real ConverseStream wire format, so the real
boto3 client parses real frames.

HTTP/1.1 with keep-alive on 127.0.0.1; ``POST /model/{modelId}/converse-stream`` answers
``200`` with ``Transfer-Encoding: chunked`` and one event-stream frame per chunk (a
``Content-Length`` body would make urllib3 read everything at the end). Each request takes the
next scripted reply (``push``), else asks ``responder``. Replies are event frames with delays,
exception frames mid-stream, HTTP errors with ``x-amzn-ErrorType``, or delayed headers.

Faults a network can make are replies too: ``Hangup`` (the connection closes mid-stream, FIN
or RST), ``HangupBeforeHeaders`` (closed after the request, not one byte answered) and
``Stall`` (headers and some frames, then silence until the client gives up), and ``Trickle``
(bytes keep coming, a few seconds apart, and never make a whole event).

Every request body is recorded and checked against Converse's rules; problems collect in
``violations`` so a test asserts there are none. A request that leaves out (or changes) the
reasoning a reply sent with its tool use is answered as Bedrock answers it for a Claude model
thinking with tools, HTTP 400 ValidationException (``fake_reasoning``), and is a violation;
so is one with a sampling parameter the model refuses (``fake_samplers``), or a kind of
thinking or an effort it does not take (``fake_effort``), or one that sends a reasoning block
back after what came before it changed, to a model that binds its thinking to the
conversation (``fake_binding``), or that puts a cache point where the model takes none
(``fake_caching``), or offers a tool spec Bedrock or the model refuses (``fake_tools``).
Every connection records when the client closed it, from a reader that watches the socket
while the reply is being written.

    async with running_fake_bedrock() as fake:
        fake.push(text_reply(["Hello", " there"]))
        monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", fake.endpoint_url)

With ``tls=True`` it serves HTTPS with a certificate for ``localhost`` and ``127.0.0.1`` from
a private CA (``trustme``): ``endpoint_url`` is ``https://localhost:{port}`` and
``ca_bundle`` the CA's PEM file, for ``AWS_CA_BUNDLE`` or ``verify=``. Each frame is still
one ``send_all``, so one TLS record. With ``accepted_keys`` it answers a SigV4 signature
from any other access key id as an expired token (403 ``ExpiredTokenException``).

``python -m tests.fake_bedrock`` serves the benchmark script (model id ``bench.d{N}.g{MS}``:
N text deltas MS milliseconds apart; see ``bench_reply``) and ``GET /stats`` until interrupted;
with ``--scripted CONFIG_DIR`` it answers as the use cases there script it, at the pace
``--first-token-ms`` and ``--token-ms`` give (the latency benchmarks' model).
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import ExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from tests.fake_bedrock_bench import main, scripted_responder
from tests.fake_bedrock_frames import (
    Frame,
    encode_frame,
    error,
    event,
    exception,
    message_end,
    message_start,
    reasoning_events,
    redacted_events,
    text_events,
    tool_events,
)
from tests.fake_bedrock_replies import (
    Hangup,
    HangupBeforeHeaders,
    HttpError,
    Reply,
    Stall,
    StreamReply,
    Trickle,
    burst_reply,
    hangup_reply,
    stream_reply,
    text_reply,
)
from tests.fake_bedrock_requests import ConnectionRecord, RecordedRequest, request_problems
from tests.fake_bedrock_server import EXPIRED_TOKEN_MESSAGE, FakeBedrock

# what tests take from here, wherever it is defined: frames, replies, requests, the server
__all__ = [
    "EXPIRED_TOKEN_MESSAGE", "ConnectionRecord", "FakeBedrock", "Frame", "Hangup",
    "HangupBeforeHeaders", "HttpError", "RecordedRequest", "Reply", "Stall", "StreamReply",
    "Trickle", "burst_reply", "encode_frame", "error", "event", "exception",
    "fake_bedrock_env", "hangup_reply", "message_end", "message_start", "reasoning_events",
    "redacted_events", "request_problems", "running_fake_bedrock", "scripted_responder",
    "stream_reply", "text_events", "text_reply", "tool_events",
]


@asynccontextmanager
async def running_fake_bedrock(*, ca_dir: Path | None = None,
                               **options: Any) -> AsyncIterator[FakeBedrock]:
    """The fake, served for the duration of the block, then stopped by cancelling it. With
    ``tls=True`` the CA's PEM goes to ``ca_dir`` (else a temporary directory removed on exit)
    and its path is ``fake.ca_bundle``."""
    fake = FakeBedrock(**options)
    with ExitStack() as files:
        if fake.tls:
            directory = ca_dir if ca_dir is not None else Path(files.enter_context(
                tempfile.TemporaryDirectory(prefix="fake-bedrock-ca-")))
            fake.write_ca_bundle(directory / "fake-bedrock-ca.pem")
        async with trio.open_nursery() as nursery:
            await nursery.start(fake.serve)
            yield fake
            nursery.cancel_scope.cancel()


def fake_bedrock_env(fake: FakeBedrock, tmp_path: Path) -> dict[str, str]:
    """The AWS environment that points boto3 at ``fake`` and at nothing else: static dummy
    keys, one region, no AWS files or instance metadata, the fake's endpoint and, over TLS,
    its private CA. NO_PROXY is emptied over TLS so a developer's list naming localhost
    cannot make a proxy test skip its proxy. For a subprocess's env, or ``monkeypatch``."""
    env = {"AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "not-a-secret",
           "AWS_CONFIG_FILE": str(tmp_path / "no-config"),
           "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
           "AWS_EC2_METADATA_DISABLED": "true",
           "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": fake.endpoint_url}
    if fake.ca_bundle is not None:
        env.update({"AWS_CA_BUNDLE": fake.ca_bundle, "NO_PROXY": ""})
    return env


if __name__ == "__main__":
    sys.exit(main())
