"""A barge-in is cut in hypercorn's read task, where its frame arrives, when it is the next
frame the call's reader reads (voiceagent/relay/first_look.py): a scheduler pass sooner than
the reader could, and only then, so that an interrupt queued behind a prompt is still cut
in order. Real parts: trio's memory channel (the queue hypercorn hands frames through), the
real server and a real WebSocket client playing Twilio for the whole path.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import hypercorn.protocol.h11 as h11_protocol
import pytest
import trio
from hypercorn.protocol.ws_stream import WSStream

from actors import relay_reader
from actors.channel import Channel, Receiver, Sender
from actors.messages import Inbound, Interrupt
from actors.turn_slot import CutMarks
from tests.fakes import MemorySocket
from tests.server_harness import AUTH_TOKEN, barge_in_on_the_story, make_settings, running_server
from voiceagent.app import ws_pings
from voiceagent.app.caller import open_call
from voiceagent.logs import call_sid_var
from voiceagent.relay import first_look, peer_close

INTERRUPT = '{"type":"interrupt","utteranceUntilInterrupt":"Once","durationUntilInterruptMs":9}'
PROMPT = '{"type":"prompt","voicePrompt":"please do not interrupt","lang":"en-US","last":true}'


Put = Callable[[dict[str, Any]], Awaitable[None]]
Queue = tuple[Sender[Any] | trio.MemorySendChannel[Any],
              Receiver[Any] | trio.MemoryReceiveChannel[Any]]
# the two queues hypercorn may hand frames through: trio's own channel, and ours
# (``voiceagent/app/asgi_queue.py`` puts it there for the releases it knows)
QUEUES = pytest.mark.parametrize("open_queue", [
    pytest.param(lambda: trio.open_memory_channel[dict[str, Any]](10), id="trio"),
    pytest.param(lambda: Channel[dict[str, Any]](10).ends(), id="ours")])


def _put(queue: first_look.Queue, looked: list[str], *, fails: bool = False) -> Put:
    """The put hypercorn's stream makes of the app's queue (``FirstLook``), with a look that
    notes what it is shown."""
    def look(text: str) -> None:
        looked.append(text)
        if fails:
            raise RuntimeError("a look that fails")

    return first_look.looking_put(queue, {"type": "websocket", first_look.SCOPE_KEY: look})


@QUEUES
async def test_a_frame_is_looked_at_only_when_the_reader_waits_with_nothing_ahead(
        open_queue: Callable[[], Queue]) -> None:
    send, receive = open_queue()
    looked: list[str] = []
    put = _put(send, looked)
    got: list[str] = []
    busy = trio.Event()

    # nobody waits on the queue yet (the call is still between frames): not looked at
    await put({"type": "websocket.receive", "text": PROMPT})
    assert looked == []
    got.append(receive.receive_nowait()["text"])

    async def reader() -> None:
        while True:
            got.append((await receive.receive()).get("text", "-"))
            if len(got) == 3:
                await busy.wait()       # handling a frame: say, its channel onward full

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        # the reader waits with nothing queued: each frame is looked at, the look decides
        await put({"type": "websocket.receive", "text": PROMPT})
        assert looked == [PROMPT]
        await trio.testing.wait_all_tasks_blocked()
        # a frame handed to the reader, which has not run yet (hypercorn's read task put it
        # and goes on with the next frame of the same read): the next is not looked at
        send.send_nowait({"type": "websocket.receive", "text": PROMPT})
        await put({"type": "websocket.receive", "text": INTERRUPT})
        assert looked == [PROMPT]
        await trio.testing.wait_all_tasks_blocked()
        # the reader is still handling that frame: the interrupt waits in the queue, in order
        assert got == [PROMPT, PROMPT, PROMPT]
        assert not first_look.reader_waiting(send)
        busy.set()
        await trio.testing.wait_all_tasks_blocked()
        assert got[-1] == INTERRUPT
        # waiting again with nothing queued: looked at again
        await put({"type": "websocket.receive", "text": INTERRUPT})
        assert looked == [PROMPT, INTERRUPT]
        # bytes frames and the socket's other events are not looked at
        await put({"type": "websocket.receive", "bytes": b"\x00"})
        await put({"type": "websocket.disconnect", "code": 1000})
        assert looked == [PROMPT, INTERRUPT]
        nursery.cancel_scope.cancel()


@QUEUES
async def test_a_look_that_fails_is_logged_and_its_frame_still_queued(
        open_queue: Callable[[], Queue], caplog: pytest.LogCaptureFixture) -> None:
    send, receive = open_queue()
    looked: list[str] = []
    put = _put(send, looked, fails=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive.receive)
        await trio.testing.wait_all_tasks_blocked()
        with caplog.at_level(logging.ERROR, logger=first_look.__name__):
            await put({"type": "websocket.receive", "text": INTERRUPT})
    assert looked == [INTERRUPT]
    assert [r.getMessage() for r in caplog.records] == ["a frame's first look failed"]
    with pytest.raises(trio.WouldBlock):                 # the waiting reader took it
        receive.receive_nowait()


async def test_an_interrupt_cut_ahead_is_not_cut_again_when_read() -> None:
    marks = CutMarks()
    first = trio.CancelScope()
    assert marks.turn_started(first) == 1
    marks.cut_ahead()
    assert first.cancel_called
    marks.cut_read()                # the same interrupt, read by the reader
    assert marks.take_cut() == 1
    second = trio.CancelScope()
    assert marks.turn_started(second) == 2
    # one cut, one barge-in: a second cut of turn 1 would be taken here instead
    assert marks.take_cut() == 2
    assert not second.cancel_called
    marks.cut_read()                # an interrupt nobody cut ahead cuts when read
    assert second.cancel_called


async def test_the_server_cuts_a_barge_in_where_it_arrives(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cuts: list[bool] = []                   # per cut: made inside the reader's own loop
    call_sids: list[str] = []               # per cut: the CallSid its log lines carry
    real_cut = CutMarks.cut
    reading: set[trio.lowlevel.Task] = set()
    real_read = relay_reader._read

    async def read(*args: Any) -> None:
        reading.add(trio.lowlevel.current_task())
        await real_read(*args)

    def cut(self: CutMarks) -> None:
        cuts.append(trio.lowlevel.current_task() in reading)
        call_sids.append(call_sid_var.get())
        real_cut(self)

    monkeypatch.setattr(relay_reader, "_read", read)
    monkeypatch.setattr(CutMarks, "cut", cut)
    with trio.fail_after(20):
        async with running_server(make_settings(tmp_path)) as server:
            async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                barge = await barge_in_on_the_story(call)
                call_sid = call.identity.call_sid
                await call.hang_up()
            await server.runtime.calls.wait_idle()
            history = server.runtime.calls.reports[-1].history
    assert len(reading) == 1
    assert cuts == [False]          # once, and not by the reader
    assert call_sids == [call_sid]
    assert [f for f in barge.after if f.get("last")] == [
        {"type": "text", "token": "", "last": True}]
    assert history is not None
    assert history.messages[-1]["content"][0]["text"] == barge.heard.strip()


def test_install_stacks_on_the_servers_streams_and_refuses_an_unknown_hypercorn(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(h11_protocol, "WSStream", WSStream)
    assert peer_close.install()
    assert ws_pings.install()
    assert first_look.install()
    assert first_look.install()
    installed = h11_protocol.WSStream
    assert issubclass(installed, first_look.FirstLook)
    assert issubclass(installed, ws_pings.PromptPings)
    assert peer_close.codes_known()                     # the peer's close codes still kept
    assert ws_pings.install()
    assert h11_protocol.WSStream is installed

    # a release the look was not written against: left alone, and said
    monkeypatch.setattr(h11_protocol, "WSStream", WSStream)
    monkeypatch.setattr(peer_close, "hypercorn_release", lambda: "0.19.0")
    with caplog.at_level(logging.WARNING, logger=first_look.__name__):
        assert not first_look.install()
    assert h11_protocol.WSStream is WSStream
    assert "a barge-in is cut when the call's reader reads it" in caplog.text


class LookingSocket(MemorySocket):
    """The in-memory socket, with the look the reader sets kept for the test to call."""

    def __init__(self) -> None:
        super().__init__()
        self.looks: list[Callable[[str], None] | None] = []

    def look_first(self, look: Callable[[str], None] | None) -> None:
        self.looks.append(look)


async def test_the_reader_cuts_ahead_only_for_an_interrupt_and_stops_looking_when_done() -> None:
    socket, marks = LookingSocket(), CutMarks()
    speaking = trio.CancelScope()
    marks.turn_started(speaking)
    inbound, messages = trio.open_memory_channel[Inbound](10)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(relay_reader.run, socket=socket, inbound=inbound,
                                       stats=relay_reader.FrameStats(), max_frame_bytes=4096,
                                       marks=marks))
            await trio.testing.wait_all_tasks_blocked()
            [look] = socket.looks
            assert look is not None
            look(PROMPT)                    # says "interrupt", is not one
            assert not speaking.cancel_called
            look(INTERRUPT)
            assert speaking.cancel_called
            socket.push(INTERRUPT)          # the same frame, now read: not cut again
            assert isinstance(await messages.receive(), Interrupt)
            assert marks.take_cut() == 1
            marks.turn_started(trio.CancelScope())
            assert marks.take_cut() == 2    # none pending: a second cut would say turn 1
            socket.hang_up()
    assert socket.looks == [look, None]
