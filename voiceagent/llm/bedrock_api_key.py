"""A Bedrock API key (``AWS_BEARER_TOKEN_BEDROCK``): when it stops working, said before it
does, and said plainly when Bedrock refuses it.

The key is read once, at start. A short-term key (what AWS recommends over long-term ones)
lasts 12 hours at most, and no longer than the credentials that made it: a service started
with one at 3 p.m. stops answering calls in the night, and without this its log said only
that Bedrock refused "our credentials", pointing at the task role it was not using.

A short-term key is ``bedrock-api-key-`` and the base64 of a SigV4 presigned URL (host and
query, no scheme), as AWS's aws-bedrock-token-generator libraries build it: its
``X-Amz-Date`` plus ``X-Amz-Expires`` is the latest it can work. A key that carries a session
token was made from temporary credentials, which may expire first: that is not in the key,
so the stated expiry is an upper bound. Anything else (a long-term key, a format we do not
know) is taken as it is: it may work, and Bedrock says when it does not.

Nothing here puts the key, or any part of it, in a message.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

from voiceagent.llm.bedrock_errors import Failure, refuses_caching

SETTING = "AWS_BEARER_TOKEN_BEDROCK"
PREFIX = "bedrock-api-key-"
MAX_KEY_CHARS = 16_384              # a short-term key is ~1-2 KB; past this it is not read
WARN_WITHIN_S = 12 * 3600.0
MAX_PRESIGNED_S = 7 * 24 * 3600     # SigV4's own cap on X-Amz-Expires

KEY_ADVICE = (f"a service should not run on a Bedrock API key: unset {SETTING} and give it "
              "IAM role credentials (the task role on Fargate; AWS_PROFILE or "
              "AWS_ACCESS_KEY_ID elsewhere), which are renewed before they expire; "
              "otherwise generate a new key, set it and restart")

_AMZ_DATE = re.compile(r"\d{8}T\d{6}Z")
# a key refusal's own words, as opposed to the principal lacking a permission (which is
# AccessDeniedException too, and said with what to grant)
# (an IAM user's name, BedrockAPIKey-..., is in those too: a word of its own is not)
_KEY_WORDS = re.compile(r"\bapi[ _-]?key\b|\bbearer\b|authenticat|\bexpired\b",
                        re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class KeyExpiry:
    expires_at: float               # epoch seconds: X-Amz-Date + X-Amz-Expires
    session_bound: bool             # made from temporary credentials: may end sooner

    @property
    def when(self) -> str:
        return datetime.fromtimestamp(self.expires_at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def key_expiry(key: str) -> KeyExpiry | None:
    """The expiry a short-term key states; None when there is none to read."""
    if not key.startswith(PREFIX) or len(key) > MAX_KEY_CHARS:
        return None
    try:
        url = base64.b64decode(key[len(PREFIX):], validate=True).decode("ascii")
        query = parse_qs(urlsplit(f"https://{url}").query)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    date, expires = query.get("X-Amz-Date", [""])[-1], query.get("X-Amz-Expires", [""])[-1]
    if not _AMZ_DATE.fullmatch(date) or not expires.isdigit():
        return None
    try:
        signed = datetime.strptime(date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:                  # e.g. month 13
        return None
    seconds = int(expires)
    if not 0 < seconds <= MAX_PRESIGNED_S:
        return None
    return KeyExpiry(signed + seconds, "X-Amz-Security-Token" in query)


def _lasting(seconds: float) -> str:
    minutes = max(int(seconds // 60), 0)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def expired_problem(key: str | None, now: float) -> str | None:
    """What refuses start: a short-term key past its stated expiry."""
    expiry = key_expiry(key) if key else None
    if expiry is None or expiry.expires_at > now:
        return None
    return (f"{SETTING}: this short-term Bedrock API key expired at {expiry.when} "
            f"({_lasting(now - expiry.expires_at)} ago), so Bedrock would refuse every call; "
            f"{KEY_ADVICE}")


def expiry_notice(key: str | None, now: float) -> tuple[str, str | None] | None:
    """``(what, advice)`` about a key that is set: when it stops working (advice when that
    is within ``WARN_WITHIN_S``), or that its expiry cannot be read from it. None: no key."""
    if not key:
        return None
    expiry = key_expiry(key)
    if expiry is None:
        return ("a Bedrock API key whose expiry cannot be read from it (a long-term key): "
                "taken as valid now; Bedrock refuses every call once it expires or is "
                "revoked", None)
    left = expiry.expires_at - now
    if left <= 0:                       # start refuses it; an embedding may not have asked
        return (f"a short-term Bedrock API key that expired at {expiry.when}", KEY_ADVICE)
    what = (f"a short-term Bedrock API key: it expires at {expiry.when} "
            f"(in {_lasting(left)})")
    if expiry.session_bound:
        what += ", or sooner if the session that made it ends first"
    return what, (KEY_ADVICE if left <= WARN_WITHIN_S else None)


def key_refusal(failure: Failure, key: str, now: float) -> Failure:
    """``failure`` as Bedrock's refusal of the API key, when it is one: what to do instead
    of the credentials hint (the task role, AWS_PROFILE), which is not what is used."""
    said = str(getattr(failure.cause, "message", "") or "")    # Bedrock's, without hints
    if failure.kind != "credentials" or (
            failure.code == "AccessDeniedException"
            and (refuses_caching(said) or not _KEY_WORDS.search(said))):
        return failure
    said = said or failure.code
    expiry = key_expiry(key)
    if expiry is None:
        why = "the key expired or was revoked"
    elif expiry.expires_at <= now:
        why = f"the key expired at {expiry.when}"
    else:
        why = (f"the key states it lasts until {expiry.when}: it was revoked, or the "
               "credentials that made it expired first")
    return replace(failure, message=without_key(f"{said}; {why}; {KEY_ADVICE}", key),
                   api_key=True)


def without_key(text: str, key: str) -> str:
    """``text`` with the key and its encoded body masked: an answer that echoes what it was
    sent must not carry the key into the log."""
    for secret in (key, key.removeprefix(PREFIX)):
        if len(secret) >= 8:
            text = text.replace(secret, f"<{SETTING}>")
    return text
