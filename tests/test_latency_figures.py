"""What the load benchmark takes off the server's latency as the model's own time: the whole
time the local Bedrock endpoint held each request (from when it had the request to when its
first token left), not only its lateness in sending. A run on this machine found the endpoint
(sharing a core with the callers and moto) adding up to ~8 ms in the worst 1 % of turns
between having a request and starting the reply's delay, which the server's figure carried."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import trio

from tests.fake_bedrock import burst_reply, running_fake_bedrock
from tests.test_fake_endpoints import converse_request, read_whole_reply

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from latency_figures import (  # noqa: E402
    endpoint_hold_ms,
    endpoint_holds_s,
    endpoint_read_late_s,
    lags_by_turn,
    server_overheads_ms,
)

DELAY_S = 0.02


def request(call_sid: str, index: int, received_at: float, first_sent_at: float | None,
            first_late_s: float | None = 0.0) -> dict[str, object]:
    return {"call_sid": call_sid, "index": index, "received_at": received_at,
            "first_sent_at": first_sent_at, "first_late_s": first_late_s}


async def test_the_endpoint_records_when_it_had_a_request_and_when_its_first_token_left(
) -> None:
    with trio.fail_after(5):
        async with running_fake_bedrock() as fake:
            fake.push(burst_reply(["We open", " at nine."], first_delay_s=DELAY_S))
            stream = await trio.open_tcp_stream("127.0.0.1", fake.port)
            async with stream:
                await stream.send_all(converse_request("localhost"))
                await read_whole_reply(stream)
            (recorded,) = fake.requests
            await recorded.done.wait()
            stats = fake.stats()
    (entry,) = stats["requests"]
    assert entry["first_sent_at"] == recorded.first_sent_at
    assert entry["first_sent_at"] - entry["received_at"] >= DELAY_S   # the delay is inside
    assert entry["first_late_s"] is not None


def test_the_hold_is_the_endpoint_s_whole_time_beyond_the_configured_delay() -> None:
    # had the request at 10.000 s, sent the first token at 10.3125 s: 12.5 ms beyond 300,
    # though it sent only 2 ms after its own (late-started) timer
    assert endpoint_hold_ms(request("CA1", 0, 10.0, 10.3125, 0.002), 300.0) == pytest.approx(
        12.5)
    # an endpoint that does not record the send: its lateness in sending only
    assert endpoint_hold_ms(request("CA1", 0, 10.0, None, 0.002), 300.0) == pytest.approx(2.0)
    assert endpoint_hold_ms(request("CA1", 0, 10.0, None, None), 300.0) is None
    stats = {"requests": [request("CA1", 0, 9.0, 9.31), request("CA1", 1, 10.0, 10.305)]}
    assert endpoint_holds_s(stats, 9.5, 300.0) == [pytest.approx(0.005)]


def test_the_hold_starts_when_the_request_arrived_when_the_endpoint_knows() -> None:
    """With the kernel's stamp the endpoint's late read is its own, not the server's: the
    hold runs from the arrival (9.996 s) and the late read is shown apart."""
    stamped = {**request("CA1", 0, 10.0, 10.3125, 0.002), "arrived_at": 9.996}
    assert endpoint_hold_ms(stamped, 300.0) == pytest.approx(16.5)
    stats = {"requests": [stamped, request("CA1", 1, 11.0, 11.31)]}
    assert endpoint_read_late_s(stats, 9.5) == [pytest.approx(0.004)]
    assert endpoint_read_late_s(stats, 10.5) == []


def test_each_turn_is_charged_its_first_request_s_hold_and_no_more() -> None:
    turns = [{"call_sid": "CA1", "turn": 1, "rounds": 2, "latency_ms": 330.0},   # a tool round
             {"call_sid": "CA1", "turn": 2, "rounds": 1, "latency_ms": 320.0},
             {"call_sid": "CA2", "turn": 1, "rounds": 1, "latency_ms": 340.0}]
    stats = {"requests": [request("CA1", 0, 1.0, 1.310), request("CA1", 1, 2.0, 2.5),
                          request("CA1", 2, 3.0, 3.304),
                          request("CA2", 0, 1.0, 1.3), request("CA2", 1, 2.0, 2.3)]}
    lags = lags_by_turn(turns, stats, 300.0)
    assert lags == {("CA1", 1): pytest.approx(10.0), ("CA1", 2): pytest.approx(4.0)}
    # CA2's request count does not match its turns: left out, not misattributed
    assert server_overheads_ms(turns, 300.0, lags) == [pytest.approx(20.0),
                                                        pytest.approx(16.0)]
