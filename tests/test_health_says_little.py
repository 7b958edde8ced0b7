"""``/health`` is on the public port, through the ALB and without a proxy alike: it said how
many calls the process had in progress to anyone who asked. The ALB's check and ECS's read
its status code alone (sam/cloud-deploy-infra-template.yml: Matcher 200, urlopen); the
operator has the count from /metrics and the ActiveCalls metric."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from tests.server_harness import AUTH_TOKEN, make_settings, running_server, until_started
from tests.test_edge_attacks import raw_answer
from voiceagent.app.caller import open_call


async def _health(url: str) -> tuple[bytes, dict[str, object]]:
    answer = await raw_answer(url, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0], json.loads(body)


@pytest.mark.timeout(60)
async def test_health_says_ok_or_draining_and_nothing_about_calls(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with running_server(make_settings(tmp_path)) as server, \
                open_call(server.url, auth_token=AUTH_TOKEN) as call:
            await until_started(server.runtime.calls, 1)
            assert await _health(server.url) == (b"HTTP/1.1 200 ", {"status": "ok"})
            server.runtime.draining = True
            assert await _health(server.url) == (b"HTTP/1.1 503 ", {"status": "draining"})
            server.runtime.draining = False
            await call.hang_up()
            await server.runtime.calls.wait_idle()
