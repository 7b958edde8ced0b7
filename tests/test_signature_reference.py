"""``signature.is_valid`` against twilio's RequestValidator, the reference: the same verdict
on the same request (ports, query strings, repeated names, both algorithms, hosts that make no
URL), at a cost on the event loop that grows once per field and not with the URL's query."""

from __future__ import annotations

import itertools
from collections.abc import Mapping

from twilio.request_validator import RequestValidator, get_signature_algorithm
from werkzeug.datastructures import MultiDict

from tests.call_counts import calls_made
from voiceagent import signature

TOKEN, SHARED = "auth-token-not-secret", "shared-key-secret-not-secret"
SETTINGS = "key=webhooks_sharedkey_1,algorithm=HMAC_SHA256"


def reference(url: str, params: signature.Form, headers: Mapping[str, str]) -> bool:
    """What ``is_valid`` answered when it asked RequestValidator (commit 8ec41de), the
    fields' pairs in the MultiDict quart gave it then."""
    if not isinstance(params, Mapping):
        params = MultiDict(params)
    given = headers.get("x-twilio-signature", "")
    settings = headers.get("x-twilio-webhooks-signature-settings")
    secret = SHARED if settings else TOKEN
    algorithm = get_signature_algorithm(settings)
    if not given or algorithm.upper() not in signature.ALGORITHMS:
        return False
    try:
        return bool(RequestValidator(secret).validate(url, params, given, algorithm=algorithm))
    except ValueError:
        return False


URLS = ["https://agent.example.com/twiml", "https://agent.example.com:443/twiml",
        "http://agent.example.com:8080/action", "http://127.0.0.1:80/twiml",
        "wss://agent.example.com/relay", "wss://agent.example.com:443/relay",
        "https://agent.example.com/twiml?useCase=my%20case&a=1&a=2&bodySHA256=abc",
        "https://agent.example.com/tw%69ml?why=what?", "https://[::1]:8443/twiml?x",
        "https://user:pw@agent.example.com:444/twiml", "https://agent.example.com:/twiml",
        "https://h:abc/twiml", "https://[::1/twiml", "https://agent.example.com:99999/twiml"]
REPEATED = [("SipHeader_X-Tag", "b"), ("SipHeader_X-Tag", "a"), ("SipHeader_X-Tag", "b"),
            ("a", ""), ("A", "x"), ("a_", "y"), ("日本", "語"), ("a", "")]
FORMS: list[signature.Form] = [
    {}, [],
    {"CallSid": "CA" + "0" * 32, "From": "+14155551234", "Caller": "José"},
    REPEATED, MultiDict(REPEATED),                  # the webhook's pairs; a caller's MultiDict
    [("CallSid", "CA1"), ("CallStatus", "ringing")],
]


def signatures_for(url: str, params: signature.Form) -> list[str]:
    """Twilio's signature of this request for each URL a validator tries and each key, and
    some that are no one's."""
    if not isinstance(params, Mapping):
        params = MultiDict(params)
    found = ["bm90", "", "A" * 28, "Ünïcode", "A" * 44]
    for secret, algorithm in ((TOKEN, "HMAC_SHA1"), (SHARED, "HMAC_SHA256")):
        validator = RequestValidator(secret)
        for variant in {url, url.replace(":443/", "/"), url.replace(".com/", ".com:443/"),
                        url.replace("wss:", "https:")}:
            text = validator.compute_signature(variant, params, algorithm=algorithm)
            found += [text, text + " ", text[:-1]]
    return found


def test_the_verdicts_are_twilios_validators() -> None:
    settings_headers = [{}, {"x-twilio-webhooks-signature-settings": SETTINGS},
                        {"x-twilio-webhooks-signature-settings": "algorithm=hmac_sha256"},
                        {"x-twilio-webhooks-signature-settings": "algorithm=HMAC_MD5"}]
    verdicts = []
    for url, params in itertools.product(URLS, FORMS):
        try:
            given = signatures_for(url, params)
        except ValueError:                  # a host that makes no URL: nothing signs it
            given = ["bm90", "A" * 28]
        for sig, extra in itertools.product(given, settings_headers):
            headers = {"x-twilio-signature": sig, **extra}
            mine = signature.is_valid(TOKEN, url, params, headers, shared_key_secret=SHARED)
            assert mine == reference(url, params, headers), (url, params, headers)
            verdicts.append(mine)
    assert verdicts.count(True) > 150
    assert verdicts.count(False) > 2000


def form(n: int) -> list[tuple[str, str]]:
    return [(f"k{i:03d}", "v") for i in range(n)]


def check(url: str, params: signature.Form) -> None:
    signature.is_valid(TOKEN, url, params, {"x-twilio-signature": "A" * 28})


def test_a_check_costs_one_pass_over_the_form() -> None:
    """RequestValidator builds the signed text twice (the URL with and without its port), and
    asks werkzeug's MultiDict for each name's values by ``getall``, which it lacks, so an
    AttributeError is raised and caught per name and pass: ~600 µs of the event loop for 200
    fields, for anyone's request. The check now reads the fields' pairs once (~100 µs)."""
    url, small, large = "https://agent.example.com/twiml", form(20), form(200)
    check(url, small)                 # urlsplit's cache met: the two counts alike but for n
    per_field = (calls_made(lambda: check(url, large))
                 - calls_made(lambda: check(url, small))) / 180
    assert per_field < 5              # RequestValidator: 8 (twice over, and the exceptions)


def test_a_check_does_not_parse_the_urls_query() -> None:
    """RequestValidator parses the URL's query (``parse_qs``) for the hash of a JSON body,
    which a form never has: a webhook or relay upgrade with 16 KB of ``a&a&…`` in its
    query, signed by no one, held the loop ~0.6 ms for it."""
    bare = "https://agent.example.com/relay"
    queried = bare + "?" + "&".join(["a"] * 8000)
    check(bare, {})
    check(queried, {})
    # splitting a URL with a query off is a few calls more; parse_qs was ~16,000 here
    assert calls_made(lambda: check(queried, {})) < calls_made(lambda: check(bare, {})) + 20
