"""A socket whose call was not in the store at the first read (its session minted by another
process, still on its way) is looked up again for ~3.5 s, and may become a call then. For
capacity it stops counting (a flood of made-up CallSids must not refuse real calls), but
it stopped counting for the drain too: a server told to stop while such a lookup ran
drained at once, and the call that started a moment later got no polite end and wrote
after the final flush. The drain now waits for it, as for a lookup at its first read
(``test_drain_waits_for_claims``), through the real server and a real WebSocket."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio
from trio.testing import wait_all_tasks_blocked

import voiceagent.store.records as records
from tests.server_harness import AUTH_TOKEN, make_settings, running_server
from tests.test_session_binding import setup_frame, signed_socket, token_in
from voiceagent.app.caller import Identity, post_form, release_transport
from voiceagent.app.server import drain

pytestmark = pytest.mark.timeout(60)


async def test_a_drain_waits_for_a_call_looked_up_again_then_ends_it_politely(
        tmp_path: Path) -> None:
    identity = Identity()
    drained: list[tuple[int, int]] = []         # (calls started, calls live) as it returned
    frames: list[dict[str, Any]] = []
    with trio.fail_after(45):
        async with running_server(make_settings(tmp_path)) as a, \
                running_server(make_settings(tmp_path)) as b:
            token = token_in(await post_form(a.url + "/twiml", {
                "CallSid": identity.call_sid, "From": identity.from_number,
                "To": identity.to_number}, AUTH_TOKEN))
            store, looked_again, answer = b.runtime.store, trio.Event(), trio.Event()
            real_get, reads = store.get, 0

            async def on_its_way(pk: str, sk: str) -> Any:
                nonlocal reads
                if (pk, sk) == (identity.call_sid, records.SESSION_SK):
                    reads += 1
                    if reads == 1:
                        return None             # a's session has not landed for b yet
                    looked_again.set()
                    await answer.wait()
                return await real_get(pk, sk)

            store.get = on_its_way                      # type: ignore[method-assign]

            async def drains() -> None:
                await drain(b.runtime)
                drained.append((b.runtime.calls.total, b.runtime.calls.active))

            async with signed_socket(b) as ws, trio.open_nursery() as nursery:
                await ws.send_message(setup_frame(identity.call_sid, token))
                await looked_again.wait()       # not a claim for capacity any more
                assert b.runtime.calls.claims == 0
                nursery.start_soon(drains)      # SIGTERM, as the lookup runs
                await wait_all_tasks_blocked()
                assert drained == []            # it waits for the lookup...
                answer.set()
                while not frames or frames[-1].get("type") != "end":
                    frames.append(json.loads(await ws.get_message()))
                await ws.aclose()               # ...then for the call, ended politely
                await release_transport(ws)
    assert drained == [(1, 0)]
    said = "".join(frame.get("token", "") for frame in frames if frame.get("type") == "text")
    assert "maintenance" in said
