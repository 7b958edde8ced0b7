"""A captured signed relay upgrade, replayed to an idle task with the setup of a call whose
token is spent (or of a CallSid nobody prepared), is refused; it must not take the task's
scale-in protection on its way (``task_protection``). Twilio's signature on the upgrade
covers only the URL, the same for every call, so anyone holding one captured upgrade could
replay it at will: while its lookup ran (~1.5 s of reads, the session's token not matching)
the socket counted as a call being claimed, so the task asked the ECS agent for protection,
kept it TASK_PROTECTION_IDLE_S after the refusal, and a replay every few seconds kept every
deployment and scale-in off it. Now only a socket whose token matches its session's counts."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from tests.fake_ecs_agent import open_fake_agent
from tests.server_harness import AUTH_TOKEN, make_settings, running_server
from tests.test_session_binding import answered, closed_with, setup_frame, signed_socket, token_in
from voiceagent.app.caller import Identity, post_form


@pytest.mark.parametrize("names", ["the spent call", "a call nobody prepared"])
@pytest.mark.timeout(60)
async def test_a_replayed_upgrade_whose_setup_opens_nothing_takes_no_protection(
        tmp_path: Path, names: str) -> None:
    identity = Identity()
    replayed = identity.call_sid if names == "the spent call" else Identity().call_sid
    with trio.fail_after(30):
        async with open_fake_agent() as fake, \
                running_server(make_settings(tmp_path, ECS_AGENT_URI=fake.uri,
                                             TASK_PROTECTION_IDLE_S="0")) as server:
            token = token_in(await post_form(server.url + "/twiml", {
                "CallSid": identity.call_sid, "From": identity.from_number,
                "To": identity.to_number}, AUTH_TOKEN))
            assert await answered(server, identity.call_sid, token)   # the call, now over
            await server.runtime.calls.wait_idle()
            held, released = await fake.wait_requests(2)
            assert (held.body["ProtectionEnabled"], released.body) == (
                True, {"ProtectionEnabled": False})
            async with signed_socket(server) as ws:               # the replay
                await ws.send_message(setup_frame(replayed, token))
                assert await closed_with(ws) == 1008
            await server.runtime.calls.wait_idle()
            with trio.move_on_after(1):         # bounds the failure: a hold asked for
                await fake.wait_requests(3)
            assert [r.body["ProtectionEnabled"] for r in fake.requests] == [True, False]
