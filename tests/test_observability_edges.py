"""Logs and metrics on the paths a happy call never takes: an unknown info event at DEBUG,
tool names the model made up, calls the store could not load, frames Twilio adds, items the
store refused, tools that timed out."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import trio

from tests.server_harness import AUTH_TOKEN, make_settings, running_server
from tests.test_metrics import _Capture, captured  # noqa: F401  (fixture)
from voiceagent.app.caller import open_call


async def test_an_unknown_info_event_at_debug_level_does_not_end_the_call(
        tmp_path: Path, captured: _Capture) -> None:  # noqa: F811
    """LOG_LEVEL=DEBUG: Twilio's ``info`` events of a name we have no type for (its
    ``debugging`` output) are logged at debug level with ``extra={"name": ...}``, a
    LogRecord attribute: ``makeRecord`` raises KeyError and the call dies with 1011."""
    logging.getLogger().setLevel(logging.DEBUG)
    with trio.fail_after(20):
        async with running_server(make_settings(tmp_path)) as server:
            async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                await call.send_json({"type": "info", "name": "debugging", "value": "x"})
                await call.say("what are your hours?")
                reply = await call.read_reply()
                await call.hang_up()
            await server.runtime.calls.wait_idle()
    assert call.closed_by_server is None
    assert reply.text.startswith("We are open")
    assert server.runtime.calls.reports[-1].ended_by == "hangup"


async def test_tool_metric_labels_stay_bounded_whatever_names_the_model_makes_up(
        tmp_path: Path) -> None:
    """The ``tool`` label of voiceagent_tool_duration_seconds / voiceagent_tool_errors_total
    is the name the model put in its toolUse block: a name no registry holds (a
    hallucination, or a caller's prompt injection: "call the tool zq1...") makes a new
    series each time, for the life of the process. Only registered names should be labels."""
    from tests.fakes import FakeLLM, tool_use, words
    from tests.test_metrics import METRICS_TOKEN, _scrape

    made_up = [f"Invented_{n}" for n in range(12)]
    scripts: list[Any] = []
    for n, name in enumerate(made_up):
        scripts += [tool_use(f"t{n}", name), words("ok", 0.001, 0.001)]
    llm = FakeLLM(scripts)
    with trio.fail_after(30):
        async with running_server(make_settings(tmp_path, METRICS_TOKEN=METRICS_TOKEN),
                                  llm=llm) as server:
            registered = set(server.runtime.registry.names())
            async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                for _ in made_up:
                    await call.say("hello")
                    await call.read_reply()
                await call.hang_up()
            await server.runtime.calls.wait_idle()
            _, samples = await trio.to_thread.run_sync(_scrape, server.url)
    labels = {dict(labels)["tool"] for (name, labels) in samples
              if name == "voiceagent_tool_errors_total"}
    assert sum(v for (name, _), v in samples.items()
               if name == "voiceagent_tool_errors_total") == len(made_up)    # all counted
    assert labels <= registered | {"unknown"}, sorted(labels - registered)


async def test_a_call_the_store_could_not_load_is_counted(tmp_path: Path) -> None:
    """A socket whose call cannot be loaded (the store throttled: ``CallUnavailable``) is
    closed 1011 with ``CallReport.ended_by == "unavailable"`` and an ERROR line, but
    voiceagent_calls_total never counts it: ``CallCounters.finished`` (the metrics hook) runs
    only for calls whose claim succeeded. An alarm on calls that failed for our store sees
    nothing during a store outage; nor do the frames that socket had rejected."""
    import voiceagent.store.records as records
    from tests.fakes import throttled_queries
    from tests.test_metrics import METRICS_TOKEN, _scrape, _value
    from tests.test_session_binding import closed_with, setup_frame, signed_socket
    from tests.test_store_outages import a_call_to_resume

    with trio.fail_after(30):
        async with running_server(make_settings(tmp_path,
                                                METRICS_TOKEN=METRICS_TOKEN)) as server:
            call_sid, token = await a_call_to_resume(server)
            with throttled_queries(server.runtime.store, records.CHAT_PREFIX):
                async with signed_socket(server) as ws:
                    await ws.send_message(setup_frame(call_sid, token))
                    code = await closed_with(ws)
                await server.runtime.calls.wait_idle()
            _, samples = await trio.to_thread.run_sync(_scrape, server.url)
    assert code == 1011
    assert _value(samples, "voiceagent_calls_total", ended_by="hangup") == 1
    assert _value(samples, "voiceagent_calls_total", ended_by="unavailable") == 1


async def test_emf_turns_count_what_prometheus_turns_count(tmp_path: Path) -> None:
    """``Turns`` in the EMF line is 1 for every turn summary, re-prompts ("Are you still
    there?") and goodbyes included, while voiceagent_turns_total counts caller turns only
    (``kind == "caller"``, as documented: "caller turns"). The CloudWatch figure and the
    Prometheus one disagree for the same process, and an idle caller inflates ``Turns``."""
    import io
    import json

    from tests.test_metrics import METRICS_TOKEN, _scrape, _value

    settings = make_settings(tmp_path, METRICS_TOKEN=METRICS_TOKEN,
                             METRICS_NAMESPACE="TestNamespace",
                             METRICS_SERVICE_NAME="test-service", IDLE_REPROMPT_S="0.3",
                             MAX_REPROMPTS="1")
    with trio.fail_after(30):
        async with running_server(settings) as server:
            stream = io.StringIO()
            assert server.runtime.metrics is not None
            server.runtime.metrics._emf_stream = stream
            async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                await call.say("what are your hours?")
                await call.read_reply()
                while (frame := await call.receive()) is not None:   # re-prompt, goodbye
                    if frame.get("type") == "end":
                        await call.hang_up()
                        break
            await server.runtime.calls.wait_idle()
            _, samples = await trio.to_thread.run_sync(_scrape, server.url)
    documents = [json.loads(line) for line in stream.getvalue().splitlines()]
    emf_turns = sum(d.get("Turns", 0) for d in documents)
    assert _value(samples, "voiceagent_turns_total") == 1
    assert emf_turns == _value(samples, "voiceagent_turns_total")


async def test_a_use_case_this_process_cannot_serve_is_our_error_not_hypercorns(
        tmp_path: Path, captured: _Capture) -> None:  # noqa: F811
    """The socket's use case, read again from the store (its cache expired), names a tool
    this process has no plugin for (a rolling deploy): ``Catalog.use_case`` raises
    ``ConfigError``, which ``SocketStanding.claim`` does not turn into ``CallUnavailable``
    (only StoreError and UnknownUseCase). It escapes the relay route: hypercorn logs "Error in
    ASGI Framework" with its own traceback; no line of ours says the call could not be
    loaded, and no "call ended" line or call metric follows."""
    import json

    from tests.test_session_binding import closed_with, setup_frame, signed_socket
    from voiceagent.app.caller import Identity, parse_relay_twiml, post_form
    from voiceagent.errors import ConfigError

    with trio.fail_after(20):
        async with running_server(make_settings(tmp_path)) as server:
            identity = Identity()
            target = parse_relay_twiml(await post_form(server.url + "/twiml", {
                "CallSid": identity.call_sid, "From": identity.from_number,
                "To": identity.to_number}, AUTH_TOKEN))

            async def unservable(name: str) -> Any:
                raise ConfigError("store item testUseCase/configuration", "tools[0].name",
                                  "no tool 'PluginGone' is registered")

            server.runtime.catalog.use_case = unservable  # type: ignore[method-assign]
            async with signed_socket(server) as ws:
                await ws.send_message(setup_frame(identity.call_sid,
                                                  target.parameters["sessionToken"]))
                code = await closed_with(ws)
            await server.runtime.calls.wait_idle()
    entries = [json.loads(line) for line in captured.lines]
    assert code == 1011
    assert not [e for e in entries if e["logger"].startswith("hypercorn")
                and e["level"] == "error"]
    assert [e for e in entries if e["event"] == "call could not be loaded"
            and e["call_sid"] == identity.call_sid]


async def test_a_webhook_for_a_use_case_this_process_cannot_serve_gets_an_apology(
        tmp_path: Path, captured: _Capture) -> None:  # noqa: F811
    """The same use case on /twiml: a 500 had Twilio play its "application error"."""
    import json

    import voiceagent.store.config_records as config_records
    from voiceagent.app.caller import Identity, post_form
    from voiceagent.usecases import UseCase

    gone = UseCase.model_validate({"name": "testUseCase", "prompt": "Hi.", "tools": [
        {"name": "PluginGone", "description": "A tool of the previous image."}]})
    with trio.fail_after(20):
        async with running_server(make_settings(tmp_path)) as server:
            await server.runtime.store.put(config_records.use_case_item(gone))
            identity = Identity()
            document = await post_form(server.url + "/twiml", {
                "CallSid": identity.call_sid, "From": identity.from_number,
                "To": identity.to_number}, AUTH_TOKEN)
    assert "<Say>" in document
    assert "<Hangup" in document
    (line,) = [json.loads(line) for line in captured.lines
               if "use case missing or unusable" in line]
    assert "PluginGone" in line["error"]
    assert line["call_sid"] == identity.call_sid


async def test_frames_of_a_type_twilio_adds_do_not_flood_the_log(
        tmp_path: Path, captured: _Capture) -> None:  # noqa: F811
    """Twilio adds message types over time, and the reader is built for it: any number of
    ``unknown_type`` frames is counted and ignored, never ends a call. But each one is also
    a WARNING line ("frame rejected"), without any rate limit: a new event Twilio sends a
    few times a second becomes thousands of warning lines per call (CloudWatch ingestion
    cost, alarms on warnings). Counted per call, the first few logged, would do."""
    import json

    with trio.fail_after(20):
        async with running_server(make_settings(tmp_path)) as server:
            async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                for _ in range(200):
                    await call.send_json({"type": "audioLevel", "level": 3})
                await call.say("what are your hours?")
                assert (await call.read_reply()).text.startswith("We are open")
                await call.hang_up()
            await server.runtime.calls.wait_idle()
    warnings = [e for e in map(json.loads, captured.lines)
                if e["level"] == "warning" and e["event"] == "frame rejected"]
    assert server.runtime.calls.reports[-1].frames.rejected["unknown_type"] == 200
    assert len(warnings) <= 10, len(warnings)


async def test_the_write_behind_line_about_a_dropped_item_carries_its_call_sid(
        captured: _Capture) -> None:  # noqa: F811
    """The drainer is one process-wide task: its lines have ``call_sid`` "-". "store refused
    item, dropped" (ERROR: a message of the call's transcript is lost) names the call only
    in ``pk``, so a search by call_sid, the field every other line of the call has, misses
    the one line saying its history is incomplete."""
    import json

    from tests.test_write_behind import FakeStore
    from voiceagent.logs import call_sid_var
    from voiceagent.store.write_behind import WriteBehind

    call_sid = "CA" + "5" * 32
    store = FakeStore()
    store.refuse.add((call_sid, "chat::0001"))
    writer = WriteBehind(store)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            call_sid_var.set(call_sid)               # as a call's task has it
            for index in range(2):
                writer.submit({"pk": call_sid, "sk": f"chat::{index:04d}"}, call_sid=call_sid)
            assert await writer.flush(call_sid, timeout_s=5)
            nursery.cancel_scope.cancel()
    (line,) = [e for e in map(json.loads, captured.lines)
               if e["event"] == "store refused item, dropped"]
    assert line["call_sid"] == call_sid, line


async def test_the_write_behind_line_about_a_superseded_write_carries_its_call_sid(
        captured: _Capture) -> None:  # noqa: F811
    """A queued session write (its write ahead of the queue timed out) that a newer one,
    written by another process, outranks is dropped by the drainer with "store write
    superseded by a newer one, dropped": a line about one call, which a search by its
    call_sid must find, like the drainer's "store refused item, dropped"."""
    import json

    from tests.test_write_behind import FakeStore
    from voiceagent.logs import call_sid_var
    from voiceagent.store.base import Version
    from voiceagent.store.write_behind import WriteBehind

    class _NewerStored(FakeStore):
        async def put_unless_newer(self, item: dict[str, Any], version: str, *,
                                   legacy: str | None = None) -> bool:
            await trio.lowlevel.checkpoint()
            return False                     # another process wrote a newer one

    call_sid = "CA" + "6" * 32
    writer = WriteBehind(_NewerStored())
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            call_sid_var.set(call_sid)               # as a webhook's task has it
            writer.submit({"pk": call_sid, "sk": "connection", "version": 1},
                          call_sid=call_sid, urgent=True, version=Version("version"))
            assert await writer.flush(call_sid, timeout_s=5)
            nursery.cancel_scope.cancel()
    (line,) = [e for e in map(json.loads, captured.lines)
               if e["event"] == "store write superseded by a newer one, dropped"]
    assert line["call_sid"] == call_sid, line


async def test_a_tool_that_timed_out_is_timed_as_long_as_it_ran(tmp_path: Path) -> None:
    """voiceagent_tool_duration_seconds observes ``ToolOutcome.duration_s``, which only a
    success sets: every error outcome (a timeout, an exception, invalid input) is observed
    as 0 s. A tool that hangs until its 0.5 s timeout shows as the fastest tool of all: the
    histogram hides exactly the slow calls it is there to show."""
    from tests.test_metrics import METRICS_TOKEN, _scrape, _value
    from voiceagent.tools.base import ToolDefinition
    from voiceagent.tools.registry import ToolRegistry

    async def hangs(ctx: Any, args: Any) -> dict[str, Any]:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    registry = ToolRegistry([ToolDefinition("CheckRestaurantPickUpTime", hangs,
                                            timeout_s=0.5)])
    with trio.fail_after(20):
        async with running_server(make_settings(tmp_path, METRICS_TOKEN=METRICS_TOKEN),
                                  registry=registry) as server:
            async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                await call.say("when can I pick up?")
                await call.read_reply()
                await call.hang_up()
            await server.runtime.calls.wait_idle()
            _, samples = await trio.to_thread.run_sync(_scrape, server.url)
    tool = "CheckRestaurantPickUpTime"
    assert _value(samples, "voiceagent_tool_errors_total", tool=tool) == 1
    assert _value(samples, "voiceagent_tool_duration_seconds_count", tool=tool) == 1
    assert _value(samples, "voiceagent_tool_duration_seconds_sum", tool=tool) >= 0.5
