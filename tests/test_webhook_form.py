"""The webhook's form decoder against ``parse_qsl`` (what quart used, and what decides the
fields a signature covers): the same pairs for every body it accepts, refusals only for
bodies no form encoder writes, and a cost that does not grow with the escapes in a body."""

from __future__ import annotations

import random
from urllib.parse import parse_qsl, urlencode

import pytest

from tests.call_counts import calls_made
from voiceagent.app.webhook_form import BadForm, fields

# pieces that meet each of parse_qsl's and quoted-printable's special cases
PIECES = [b"a", b"Z", b"=", b"&", b"+", b"%41", b"%e2", b"%82", b"%AC", b"%C3", b"%A9",
          b"%ff", b"%00", b"%25", b"%3D", b"%3d", b"%26", b"%2B", b"%0A", b"%0D", b"\n",
          b"\r", b"\r\n", b"=\n", b"=\r\n", b" ", b"_", b"\t", b"\x00", b";", b"?", b"#",
          b"\xc3\xa9", b"\xe2\x82\xac", b"\xf0\x9f\x98\x80", b"=3D", b"==", b"&&"]


def reference(body: bytes) -> list[tuple[str, str]]:
    return parse_qsl(body.decode(), keep_blank_values=True)


def test_the_fields_are_parse_qsls_for_every_body_a_form_encoder_writes() -> None:
    rng = random.Random(20261207)
    for _ in range(30000):
        body = b"".join(rng.choice(PIECES) for _ in range(rng.randint(0, 14)))
        assert fields(body) == reference(body), body


def test_twilios_own_bodies_come_out_as_sent() -> None:
    form = [("CallSid", "CA" + "0" * 32), ("From", "+14155551234"), ("CallerName", "José Ñ"),
            ("HandoffData", '{"summary": "日本語 & = + % 100%", "n": 1}'),
            ("SipHeader_X-Tag", "a=b;c=d"), ("SipHeader_X-Tag", "second"), ("Empty", "")]
    body = urlencode(form).encode()
    assert fields(body) == form == reference(body)


@pytest.mark.parametrize("body", [b"a=%", b"a=%4", b"a=%zz", b"a=%4g", b"a=b%", b"%=1",
                                  b"a=%%41", b"a=%\n0", b"a=" + b"%41" * 100 + b"%x"])
def test_a_percent_that_starts_no_escape_is_refused(body: bytes) -> None:
    """parse_qsl keeps such a '%' as it is, raising and catching an exception for each: 64 KiB
    of them held the event loop ~10 ms. No form encoder writes one."""
    with pytest.raises(BadForm, match="two hex digits"):
        fields(body)


def test_a_body_that_is_not_utf8_is_refused() -> None:
    with pytest.raises(BadForm, match="not UTF-8"):
        fields(b"CallSid=CA1&From=\xff")


def test_decoding_costs_python_calls_per_field_not_per_escape() -> None:
    """A 64 KiB body of escapes (the largest the webhooks take) decodes in a few calls per
    field: urllib's unquote went through its Python loop once per escape (~40,000 calls
    here, ~8 ms a request), before the signature says whether the sender is Twilio."""
    few = b"&".join(b"k%03d=" % i + b"%C3%A9" * 2 for i in range(20))
    many = b"&".join(b"k%03d=" % i + b"%C3%A9" * 500 for i in range(20))
    assert len(many) < 64 * 1024
    assert calls_made(lambda: fields(many)) == calls_made(lambda: fields(few)) < 20 * 20
