"""Attacks on a deployed server by someone holding its public URL and nothing else, through the
real server (hypercorn, the relay route, real TCP clients): each one here found a hole that
the other edge tests (test_security, test_hostile_input, test_session_binding,
test_edge_refusal_log_lines) did not cover."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio

from tests.server_harness import make_settings, running_server
from tests.test_e2e import upgrade_status
from tests.test_security import post

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
