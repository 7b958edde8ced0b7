"""Calls turned away at ``/twiml`` are counted, by why, once each: over capacity, draining,
the store down, a use case this process cannot serve. They never open a socket, so no call
report counts them (``voiceagent_calls_total`` counts sockets), and only a log line said a
caller had heard "we cannot take your call right now"; on AWS, where /metrics is not
reachable, the EMF line ``CallsRefused`` is what an operator can graph or alarm on."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import trio

import voiceagent.store.config_records as config_records
from tests.server_harness import AUTH_TOKEN, make_settings, running_server
from tests.test_metrics import METRICS_TOKEN, _scrape, _value
from voiceagent.app.caller import CallerError, Identity, open_call, post_form
from voiceagent.catalog import UnknownUseCase
from voiceagent.errors import StoreError
from voiceagent.usecases import UseCase


async def _ring(url: str) -> str:
    """A new call's webhook, signed; the body, or the error the caller was given."""
    identity = Identity()
    try:
        return await post_form(url + "/twiml", {"CallSid": identity.call_sid,
                                                "From": identity.from_number,
                                                "To": identity.to_number}, AUTH_TOKEN)
    except CallerError as err:
        return str(err)


def _emf_refusals(stream: io.StringIO) -> list[dict[str, Any]]:
    documents = [json.loads(line) for line in stream.getvalue().splitlines()]
    refused = [d for d in documents if "CallsRefused" in d]
    for document in refused:
        (directive,) = document["_aws"]["CloudWatchMetrics"]
        assert directive["Metrics"] == [{"Name": "CallsRefused", "Unit": "Count"}]
        assert directive["Dimensions"] == [["ServiceName"]]
        assert document["ServiceName"] == "test-service"
    return refused


async def test_each_call_turned_away_at_the_webhook_is_counted_once_by_why(
        tmp_path: Path) -> None:
    settings = make_settings(tmp_path, MAX_CALLS="1", METRICS_TOKEN=METRICS_TOKEN,
                             METRICS_NAMESPACE="TestNamespace",
                             METRICS_SERVICE_NAME="test-service")
    with trio.fail_after(30):
        async with running_server(settings) as server:
            runtime = server.runtime
            assert runtime.metrics is not None
            stream = io.StringIO()
            runtime.metrics._emf_stream = stream
            async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                await call.say("what are your hours?")
                await call.read_reply()
                assert "<Hangup" in await _ring(server.url)          # MAX_CALLS=1: full
                await call.hang_up()
            await runtime.calls.wait_idle()

            real_profile, real_use_case = runtime.catalog.profile, runtime.catalog.use_case

            async def throttled(caller: str) -> Any:
                raise StoreError("ProvisionedThroughputExceededException")

            async def unusable(name: str) -> Any:
                raise UnknownUseCase(f"{name}: names PluginGone, not registered here")

            runtime.catalog.profile = throttled  # type: ignore[method-assign]
            assert "<Hangup" in await _ring(server.url)              # the store is down
            runtime.catalog.profile = real_profile  # type: ignore[method-assign]
            runtime.catalog.use_case = unusable  # type: ignore[method-assign]
            assert "<Hangup" in await _ring(server.url)              # use case unusable
            runtime.catalog.use_case = real_use_case  # type: ignore[method-assign]

            runtime.draining = True
            assert "<Hangup" in await _ring(server.url)              # draining
            runtime.draining = False
            _, samples = await trio.to_thread.run_sync(_scrape, server.url)
    for reason in ("capacity", "store", "use_case", "draining"):
        assert _value(samples, "voiceagent_calls_refused_total", reason=reason) == 1, reason
    # the refused calls opened no socket: the one call answered is the one counted there
    assert _value(samples, "voiceagent_calls_total", ended_by="hangup") == 1
    refused = _emf_refusals(stream)
    assert sorted(d["Reason"] for d in refused) == ["capacity", "draining", "store",
                                                    "use_case"]
    assert all(d["CallsRefused"] == 1 for d in refused)


async def test_a_call_sent_to_the_fallback_url_is_counted_too(tmp_path: Path) -> None:
    """OVER_CAPACITY=503: Twilio's fallback URL takes the call, which this process has still
    turned away; a use case it cannot serve still gets the apology, not the fallback."""
    settings = make_settings(tmp_path, OVER_CAPACITY="503", METRICS_TOKEN=METRICS_TOKEN)
    gone = UseCase.model_validate({"name": "testUseCase", "prompt": "Hi.", "tools": [
        {"name": "PluginGone", "description": "A tool of the previous image."}]})
    with trio.fail_after(30):
        async with running_server(settings) as server:
            server.runtime.draining = True
            assert "HTTP 503" in await _ring(server.url)
            server.runtime.draining = False
            await server.runtime.store.put(config_records.use_case_item(gone))
            assert "<Hangup" in await _ring(server.url)
            _, samples = await trio.to_thread.run_sync(_scrape, server.url)
    assert _value(samples, "voiceagent_calls_refused_total", reason="draining") == 1
    assert _value(samples, "voiceagent_calls_refused_total", reason="use_case") == 1
    assert not [key for key in samples if key[0] == "voiceagent_calls_total"]


async def test_every_call_refused_in_an_outage_is_found_by_its_call_sid(
        tmp_path: Path, records: list[logging.LogRecord]) -> None:
    """The operator has the CallSid from Twilio's console and one grep over the log group.
    The log says why only for the first refusal of an outage (the rest are counted, at DEBUG),
    so the EMF line each refusal prints must name its call: before, it named none, and a
    grep for any caller but the first found nothing at all."""
    settings = make_settings(tmp_path, METRICS_NAMESPACE="TestNamespace",
                             METRICS_SERVICE_NAME="test-service")
    rung = [Identity() for _ in range(3)]
    with trio.fail_after(30):
        async with running_server(settings) as server:
            runtime = server.runtime
            assert runtime.metrics is not None
            stream = io.StringIO()
            runtime.metrics._emf_stream = stream

            async def throttled(caller: str) -> Any:
                raise StoreError("ProvisionedThroughputExceededException")

            runtime.catalog.profile = throttled  # type: ignore[method-assign]
            for identity in rung:
                body = await post_form(server.url + "/twiml", {
                    "CallSid": identity.call_sid, "From": identity.from_number,
                    "To": identity.to_number}, AUTH_TOKEN)
                assert "<Hangup" in body
    logged = "\n".join(f"{vars(r).get('call_sid')} {r.getMessage()}" for r in records
                       if r.levelno >= logging.INFO)
    emf = stream.getvalue()
    for n, identity in enumerate(rung):
        found = [line for line in (logged + "\n" + emf).splitlines()
                 if identity.call_sid in line]
        assert found, f"call {n}: nothing in the log names it"
        assert (identity.call_sid in logged) == (n == 0)      # the episode's first line
    refused = _emf_refusals(stream)
    assert [(d["CallSid"], d["Reason"]) for d in refused] == [
        (identity.call_sid, "store") for identity in rung]
