"""Attacks on a deployed server by someone holding its public URL and nothing else, through the
real server (hypercorn, the relay route, real TCP clients): each one here found a hole that
the other edge tests (test_security, test_hostile_input, test_session_binding,
test_edge_refusal_log_lines) did not cover."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.server_harness import AUTH_TOKEN, make_settings, running_server
from tests.test_e2e import upgrade_status
from tests.test_security import post
from voiceagent import signature
from voiceagent.app.caller import Identity, open_call
from voiceagent.signature import sign

SHARED_KEY_SECRET = "shared-key-secret-not-secret"


@pytest.mark.timeout(60)
async def test_made_up_signature_algorithms_are_counted_not_logged_one_by_one(
        tmp_path: Path, records: list[logging.LogRecord]) -> None:
    """With a Webhooks Rule's shared key set, a request naming an algorithm the twilio
    package does not know (X-Twilio-Webhooks-Signature-Settings is the sender's to write) got
    a warning line of its own from the package, with the header's text in it, for every
    request: past the edge's episodes (CloudWatch bills each line), ~16 KB of the sender's
    choosing a line."""
    junk = "algorithm=" + "X" * 4000
    settings = make_settings(tmp_path, TWILIO_SHARED_KEY_SECRET=SHARED_KEY_SECRET)
    with trio.fail_after(30):
        async with running_server(settings) as server:
            for n in range(20):
                status, _ = await post(server.url + ("/twiml", "/action")[n % 2],
                                       {"CallSid": "CA" + "9" * 32},
                                       {"X-Twilio-Signature": "bm90",
                                        "X-Twilio-Webhooks-Signature-Settings": junk})
                assert status == 403
                assert await upgrade_status(server.url, "/relay", {
                    "X-Twilio-Signature": "bm90",
                    "X-Twilio-Webhooks-Signature-Settings": junk}) == 403
    warnings = [r.getMessage() for r in records if r.levelno >= logging.WARNING]
    assert warnings == ["bad signature", "bad signature on relay upgrade",
                        "requests still refused at the edge"]      # the last: stopping
    assert not any("X" * 100 in r.getMessage() or "X" * 100 in str(vars(r))
                   for r in records)
    named = [vars(r).get("unknown_algorithm") for r in records if r.levelno >= logging.WARNING]
    assert named == ["X" * 40, "X" * 40, None]         # which one, cut: Twilio's new one?


@contextmanager
def counted_checks() -> Iterator[list[str]]:
    """The URL of each signature check made meanwhile (webhooks' and upgrades')."""
    urls: list[str] = []
    real = signature.is_valid

    def counted(auth_token: str, url: str, *args: Any, **kwargs: Any) -> bool:
        urls.append(url)
        return real(auth_token, url, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(signature, "is_valid", counted)
        yield urls


async def raw_answer(server_url: str, head: bytes) -> bytes:
    """What the server sends back to ``head`` (a request's bytes) before it closes or 2 s
    pass: b"" for a connection dropped unanswered."""
    return await _read_answer(server_url, head, lambda answer: False)


async def raw_response(server_url: str, head: bytes) -> bytes:
    """One whole response to ``head`` (its head, then as many bytes as its Content-Length
    says), on a connection the server rightly keeps open: ``raw_answer`` waited 2 s of real
    time there for a close that never comes. Without a Content-Length, as ``raw_answer``."""
    return await _read_answer(server_url, head, _whole_response)


def _whole_response(answer: bytes) -> bool:
    response_head, blank, body = answer.partition(b"\r\n\r\n")
    lengths = [line.partition(b":")[2] for line in response_head.split(b"\r\n")
               if line.lower().startswith(b"content-length:")]
    return bool(blank and lengths and len(body) >= int(lengths[0]))


async def _read_answer(server_url: str, head: bytes, done: Callable[[bytes], bool]) -> bytes:
    """``head`` sent on a fresh connection, then what comes back until the server closes,
    ``done`` says the answer is whole, or 2 s pass."""
    host, port = server_url.removeprefix("http://").split(":")
    answer = b""
    async with await trio.open_tcp_stream(host, int(port)) as stream:
        await stream.send_all(head)
        with trio.move_on_after(2):
            while chunk := await stream.receive_some(4096):
                answer += chunk
                if done(answer):
                    break
    return answer


@pytest.mark.parametrize("header", ["Sec-WebSocket-Protocol", "Sec-WebSocket-Extensions",
                                    "Connection"])
@pytest.mark.timeout(60)
async def test_an_upgrade_with_a_byte_past_ascii_in_a_header_leaves_the_server_up(
        tmp_path: Path, header: str, records: list[logging.LogRecord]) -> None:
    """hypercorn splits these headers of any upgrade (any path, before the app or a
    signature check sees it) with wsproto, which decodes them as ASCII: one byte past it
    raised out of the connection's task, and trio's listener took the whole server down
    with it (every call in the process cut, every later request refused). Now that
    connection alone is dropped, and the episode of edge refusals counts it."""
    value = "Upgrade, x" if header == "Connection" else "x"
    with trio.fail_after(30):
        async with running_server(make_settings(tmp_path)) as server:
            host = server.url.removeprefix("http://")
            for _ in range(3):
                head = (f"GET /relay HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                        "Sec-WebSocket-Version: 13\r\n"
                        + ("" if header == "Connection" else "Connection: Upgrade\r\n")
                        + f"{header}: {value}\xe9\r\n\r\n").encode("latin1")
                answer = await raw_answer(server.url, head)
                assert not answer.startswith(b"HTTP/1.1 101")
            async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                await call.say("what are your hours?")
                assert (await call.read_reply()).text.startswith("We are open")
                await call.hang_up()
            await server.runtime.calls.wait_idle()
    failed = [r for r in records if r.getMessage() == "connection failed in the server's "
              "HTTP code: dropped"]
    assert len(failed) == 1
    assert "UnicodeDecodeError" in vars(failed[0])["error"]


@pytest.mark.timeout(60)
async def test_a_captured_twiml_request_cut_at_other_places_mints_nothing(
        tmp_path: Path) -> None:
    """Twilio signs the URL followed by each name and value, sorted by name, with nothing
    between them: moving where a name ends and its value starts keeps the signature. The
    request of a call, captured, then sent with ``CallStatus`` and its value folded into
    the CallSid, was a call nobody had prepared yet: a new session (with the real caller's
    From, so their profile) and a token for whoever sent it; a replay is refused only for a
    CallSid already seen. Twilio's CallSids are CA and 32 hex digits, so such a request is
    refused before anything is minted."""
    identity = Identity()
    form = {"CallSid": identity.call_sid, "AccountSid": identity.account_sid,
            "From": identity.from_number, "To": identity.to_number,
            "CallStatus": "ringing", "Direction": "inbound", "ApiVersion": "2010-04-01"}
    folded = {k: v for k, v in form.items() if k != "CallStatus"}
    folded["CallSid"] = identity.call_sid + "CallStatusringing"
    with trio.fail_after(30):
        async with running_server(make_settings(tmp_path)) as server:
            url = server.url + "/twiml"
            headers = {"X-Twilio-Signature": sign(AUTH_TOKEN, url, form)}
            assert sign(AUTH_TOKEN, url, folded) == headers["X-Twilio-Signature"]
            status, _ = await post(url, form, headers)          # Twilio's own
            assert status == 200
            status, body = await post(url, folded, headers)     # the same, cut elsewhere
            assert "sessionToken" not in body
            assert status == 400
            assert "CallSid" in body


@pytest.mark.timeout(60)
async def test_a_webhook_of_thousands_of_fields_is_refused_before_its_signature_is_checked(
        tmp_path: Path) -> None:
    """64 KB of ``k1=&k2=&…`` (9,000 fields) with any X-Twilio-Signature: parsed into a form,
    then signed twice over (with and without the port) by the twilio package at ~5 µs a
    field, ~50 ms of the event loop each, every call in the process stalled meanwhile, and
    anyone can send them back to back. Twilio sends a few dozen fields; past MAX_FIELDS
    the request is refused (413) before the form is parsed or the signature computed."""
    body = "&".join(f"k{i}=" for i in range(9000))
    with trio.fail_after(30), counted_checks() as checks:
        async with running_server(make_settings(tmp_path)) as server:
            answer = await raw_answer(server.url, (
                f"POST /twiml HTTP/1.1\r\nHost: {server.url.removeprefix('http://')}\r\n"
                "Content-Type: application/x-www-form-urlencoded\r\n"
                f"X-Twilio-Signature: bm90\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n" + body).encode())
            assert answer.startswith(b"HTTP/1.1 413 ")
            assert b"fields" in answer
            assert checks == []
            async with open_call(server.url, auth_token=AUTH_TOKEN) as call:   # Twilio's
                await call.say("what are your hours?")
                assert (await call.read_reply()).text.startswith("We are open")
                await call.hang_up()
            await server.runtime.calls.wait_idle()
    assert checks


@pytest.mark.parametrize("content_type", ["multipart/form-data; boundary=b", "application/json"])
@pytest.mark.timeout(60)
async def test_a_webhook_body_that_is_not_a_form_is_refused_unparsed(
        tmp_path: Path, content_type: str) -> None:
    """Twilio's webhooks are urlencoded forms: no other body reaches a parser (a multipart
    one went through the multipart parser before its signature was checked), and the answer
    says what was expected."""
    body = "--b\r\nContent-Disposition: form-data; name=\"CallSid\"\r\n\r\nCA1\r\n--b--\r\n"
    with trio.fail_after(30):
        async with running_server(make_settings(tmp_path)) as server:
            answer = await raw_answer(server.url, (
                f"POST /twiml HTTP/1.1\r\nHost: {server.url.removeprefix('http://')}\r\n"
                f"Content-Type: {content_type}\r\nX-Twilio-Signature: bm90\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}").encode())
    assert answer.startswith(b"HTTP/1.1 415 ")
    assert b"application/x-www-form-urlencoded" in answer


@pytest.mark.parametrize(("body", "said"), [
    (b"k=%zz" * 13000, b"two hex digits"),                  # 64 KiB, ~10 ms of parse_qsl
    (b"CallSid=CA1&From=%2B1415\xff", b"not UTF-8")])
@pytest.mark.timeout(60)
async def test_a_webhook_body_no_form_encoder_writes_is_refused_before_its_signature(
        tmp_path: Path, records: list[logging.LogRecord], body: bytes, said: bytes) -> None:
    """A '%' that starts no escape was decoded by parse_qsl one raised exception at a time
    (64 KiB of them: ~10 ms of the event loop a request, with any signature); a body not in
    UTF-8 was read as an empty form and its signature checked. Twilio sends neither: such a
    body is refused (400, saying what was wrong) before a signature is computed, and
    logged with the edge's refusals."""
    with trio.fail_after(30), counted_checks() as checks:
        async with running_server(make_settings(tmp_path)) as server:
            answer = await raw_answer(server.url, (
                f"POST /action HTTP/1.1\r\nHost: {server.url.removeprefix('http://')}\r\n"
                "Content-Type: application/x-www-form-urlencoded\r\n"
                f"X-Twilio-Signature: bm90\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n").encode() + body)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert said in answer
    assert b"urlencoded" in answer
    assert checks == []
    refusal, = (vars(r) for r in records if r.getMessage() == "webhook body not a urlencoded form")
    assert refusal["path"] == "/action"
    assert said.decode() in refusal["error"]


@pytest.mark.timeout(60)
async def test_a_webhook_of_escapes_up_to_the_cap_is_read_as_twilio_signed_it(
        tmp_path: Path) -> None:
    """Twilio's encoder escapes every byte of a non-ASCII value and each of ``+&=%``: a field
    of 3,000 ``é+ &=%`` is 57 KB, mostly escapes, decoded without urllib's per-escape loop
    to what Twilio signed."""
    identity = Identity()
    form = {"CallSid": identity.call_sid, "AccountSid": identity.account_sid,
            "From": identity.from_number, "To": identity.to_number, "CallStatus": "ringing",
            "SipHeader_X-Note": "é+ &=%" * 3000}
    with trio.fail_after(30), counted_checks() as checks:
        async with running_server(make_settings(tmp_path)) as server:
            url = server.url + "/twiml"
            status, body = await post(url, form, {"X-Twilio-Signature": sign(AUTH_TOKEN, url,
                                                                              form)})
    assert status == 200
    assert "sessionToken" in body
    assert checks == [url]
