"""What went wrong with a Bedrock call, in the terms the retry policy and the runtime need.

Every fault an exchange can meet ends here as a ``Failure``: an HTTP error answer, an error
inside the event stream, a reply that broke Converse's own rules, and every network fault
(refused, reset, closed early, TLS, DNS, timeouts, a proxy that refuses). None of them
escapes as a raw library exception: a turn that sees one apologises and the call goes on.

Kinds: ``throttled`` and ``unavailable`` may pass if tried again; ``rejected`` is the
request's own fault (usually the history); ``credentials`` is who we are (expired, unknown
or missing credentials, no model access): trying again cannot help, and the log says what to
check; ``stream`` broke inside a reply; ``bug`` is ours.

Retries share one per-process quota, as botocore's ``standard`` retry mode does
(``voiceagent.retry_quota``): each retry takes from it, each success gives back, so under
sustained throttling the process stops multiplying its load instead of tripling it.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
from dataclasses import dataclass

import h11
import trio
from botocore.exceptions import BotoCoreError, NoCredentialsError

from voiceagent.aws_http import ConnectTimeout
from voiceagent.llm.eventstream import ReplyError, StreamFault
from voiceagent.logs import redact
from voiceagent.net import ProxyRefused

CREDENTIALS_HINT = ("check the task role or AWS_PROFILE (`aws sso login` for an SSO profile) / "
                    "AWS_ACCESS_KEY_ID, that temporary credentials are refreshed, and the "
                    "machine's clock")
ACCESS_HINT = ("grant bedrock:InvokeModelWithResponseStream on the model (and its inference "
               "profile) and enable model access in the Bedrock console for this region")
CACHING_HINT = ("the model takes no cache points here, so every request of a use case with "
                "model_options.prompt_caching on is refused: turn it off in that use case, or "
                "name a model that takes them by its model id (not an ARN); this is not about "
                "model access or IAM")
TLS_HINT = ("the endpoint's certificate is not trusted: if a proxy or a private endpoint "
            "presents its own CA, set AWS_CA_BUNDLE (or ca_bundle in the AWS profile)")


@dataclass(frozen=True, slots=True)
class Failure:
    code: str                      # PascalCase, as in the HTTP error type
    message: str
    kind: str                      # throttled | unavailable | rejected | credentials | stream | bug
    retryable: bool                # before any content, trying again may help
    cause: BaseException
    api_key: bool = False          # Bedrock refused the API key (``bedrock_api_key``)


class BedrockHTTPError(Exception):
    """An HTTP error answer before the stream started (status, x-amzn-ErrorType, message)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        self.status = status
        self.code = code
        self.message = message
        super().__init__(f"HTTP {status} {code}: {message}")

    @classmethod
    def of_answer(cls, status: int, error_type: str, body: bytes) -> BedrockHTTPError:
        """From the answer: its x-amzn-ErrorType, else its JSON body's ``__type``, names it."""
        message = ""
        try:
            parsed = json.loads(body or b"{}")
            message = str(parsed.get("message") or parsed.get("Message") or "")
            code = error_type or str(parsed.get("__type", "")).rsplit("#", 1)[-1]
        except (ValueError, AttributeError):
            code = error_type
        return cls(status, code or f"HTTP{status}", message)


class ReadTimeout(Exception):
    """No whole event (nor the headers) from Bedrock for longer than the read timeout."""


class FirstEventTimeout(ReadTimeout):
    """The request went out and the model said nothing (no content block, no stop; the
    headers and ``messageStart`` do not count) within the first-event timeout. Nothing has
    been spoken, so it is tried again: a request that stalls at its start (a black-holed
    connection, a stuck host) most often answers at once on a new connection."""


class ReplyTooSlow(Exception):
    """The reply was not whole by the stream's deadline: events kept coming, but slower than
    the caller hears them spoken, so the turn would drip a word every few seconds."""


_KINDS: dict[str, tuple[str, bool]] = {
    "ThrottlingException": ("throttled", True),
    "ServiceUnavailableException": ("unavailable", True),
    "InternalServerException": ("unavailable", True),
    "ModelNotReadyException": ("unavailable", True),
    "ModelTimeoutException": ("unavailable", False),
    "ModelStreamErrorException": ("stream", True),
    "ModelErrorException": ("stream", False),
    "ValidationException": ("rejected", False),
    "ResourceNotFoundException": ("rejected", False),
    "AccessDeniedException": ("credentials", False),
    "ExpiredTokenException": ("credentials", False),
    "ExpiredToken": ("credentials", False),
    "UnrecognizedClientException": ("credentials", False),
    "InvalidSignatureException": ("credentials", False),
    "IncompleteSignatureException": ("credentials", False),
    "MissingAuthenticationTokenException": ("credentials", False),
    "InvalidClientTokenId": ("credentials", False),
    "SignatureDoesNotMatch": ("credentials", False),
}


def classify(exc: BaseException) -> Failure:
    """``exc``, raised while opening or reading an exchange, as a ``Failure``.

    A fault we expect (all but a ``bug``) leaves its traceback behind, and its chain's: the
    failure outlives the handler that caught it, and the frames would keep what they held
    (the attempt, its connection and socket, h11's state) alive in a cycle, as the frame
    that caught it holds it in a local and h11 re-raises its own error from a frame that
    holds it. Reference counting cannot free a cycle; the middle collection that can comes
    minutes apart under load (``voiceagent.app.heap``). Its code and message are what the
    log says of it; a bug keeps its traceback for the log."""
    failure = _classified(exc)
    if failure.kind != "bug":
        _forget_frames(exc)
    return failure


def _forget_frames(exc: BaseException) -> None:
    chained: BaseException | None = exc
    seen: set[int] = set()
    while chained is not None and id(chained) not in seen:
        seen.add(id(chained))
        chained.__traceback__ = None
        chained = chained.__cause__ or chained.__context__


def _classified(exc: BaseException) -> Failure:
    if isinstance(exc, BedrockHTTPError):
        return _by_code(exc.code, exc.message, exc.status, exc, in_stream=False)
    if isinstance(exc, StreamFault):
        return _by_code(exc.code, exc.message, 0, exc, in_stream=True)
    if isinstance(exc, ReplyError):
        return Failure(exc.code, exc.message, "stream", True, exc)
    if isinstance(exc, NoCredentialsError):
        return Failure("NoCredentials", f"no AWS credentials found; {CREDENTIALS_HINT}",
                       "credentials", False, exc)
    if isinstance(exc, BotoCoreError):      # a credential refresh that failed, a bad config
        return Failure(type(exc).__name__, f"{exc}; {CREDENTIALS_HINT}", "credentials",
                       False, exc)
    return network_failure(exc)


def network_failure(exc: BaseException) -> Failure:
    """Every way the connection itself can fail. Anything not known here is a bug."""
    exc = _connect_error(exc)
    if isinstance(exc, FirstEventTimeout):
        return Failure("FirstEventTimeout", str(exc), "unavailable", True, exc)
    if isinstance(exc, ReplyTooSlow):
        return Failure("ReplyTooSlow", str(exc), "stream", False, exc)
    if isinstance(exc, ReadTimeout):
        return Failure("ReadTimeout", str(exc), "unavailable", True, exc)
    if isinstance(exc, ConnectTimeout | trio.TooSlowError):
        return Failure("ConnectTimeout", str(exc) or "connect timeout", "unavailable", True,
                       exc)
    if isinstance(exc, ProxyRefused):
        return Failure("ProxyRefused", f"{exc} (check HTTPS_PROXY and NO_PROXY)",
                       "unavailable", exc.status == 0 or exc.status >= 500, exc)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return Failure("TLSCertificateError", f"{exc.verify_message}; {TLS_HINT}",
                       "unavailable", False, exc)
    if isinstance(exc, ssl.SSLError):
        return Failure("TLSError", str(exc), "unavailable", True, exc)
    if isinstance(exc, socket.gaierror):
        return Failure("DNSError", f"cannot resolve the Bedrock host: {exc}", "unavailable",
                       True, exc)
    if isinstance(exc, ConnectionRefusedError):
        return Failure("ConnectionRefused", str(exc), "unavailable", True, exc)
    if isinstance(exc, OSError | h11.ProtocolError | trio.BrokenResourceError
                  | trio.ClosedResourceError):
        return Failure("ConnectionClosed", _closed_message(exc), "unavailable", True, exc)
    return Failure(type(exc).__name__, str(exc), "bug", False, exc)


def _connect_error(exc: BaseException) -> BaseException:
    """trio's ``open_tcp_stream`` raises one ``OSError`` for all the addresses it tried, the
    individual errors in its cause: when they are all of one kind, that kind says more."""
    cause = exc.__cause__
    if type(exc) is OSError and isinstance(cause, BaseExceptionGroup):
        kinds = {type(inner) for inner in cause.exceptions}
        if len(kinds) == 1:
            return cause.exceptions[0]
    return exc


def _closed_message(exc: BaseException) -> str:
    if isinstance(exc, h11.RemoteProtocolError):
        return f"Bedrock's connection ended mid-reply: {exc}"
    return f"the connection to Bedrock failed: {type(exc).__name__}: {exc}".rstrip(": ")


def _by_code(raw_code: str, message: str, status: int, exc: BaseException, *,
             in_stream: bool) -> Failure:
    code = raw_code[:1].upper() + raw_code[1:]
    if code in _KINDS:
        kind, retryable = _KINDS[code]
    elif status == 429:
        kind, retryable = "throttled", True
    elif status >= 500 and not in_stream:
        kind, retryable = "unavailable", True
    elif status in (401, 403):
        kind, retryable = "credentials", False
    else:
        kind, retryable = ("stream" if in_stream else "rejected"), False
    if kind == "credentials":
        hint = (CREDENTIALS_HINT if code != "AccessDeniedException"
                else CACHING_HINT if refuses_caching(message) else ACCESS_HINT)
        message = f"{message}; {hint}"
    return Failure(code, without_echoed_values(message), kind, retryable, exc)


# Bedrock's 403 AccessDeniedException for a cache point sent to a model that takes none:
# "You invoked an unsupported model or your request did not allow prompt caching"
_NO_CACHING_WORDS = re.compile(r"\bprompt caching\b", re.IGNORECASE)


def refuses_caching(message: str) -> bool:
    """Whether an AccessDeniedException's words are about prompt caching, not access: a
    cache point sent to a model that takes none is refused with the same 403 code as a
    model never enabled, and the permissions hint would send the operator the wrong way."""
    return bool(_NO_CACHING_WORDS.search(message))


# up to the last `' at '<path>'` (greedy: the value may hold `' at '` itself), else the end
_ECHOED_VALUE = re.compile(r"\bValue '(?:.*(' at ')(?=[\w.\[\]-]+')|.*\Z)",
                           re.DOTALL | re.IGNORECASE)


def without_echoed_values(message: str) -> str:
    """AWS's validation messages quote the value they refused (``Value '...' at
    'messages.1.member.content...' failed to satisfy constraint``): the caller's words, the
    model's or a tool's result, which must not reach the log. The value is masked; the path
    and the constraint, which tell the operator what broke, stay. Masking stopped at the
    first ``' at '``, so a value holding one leaked the rest of itself; now it runs to the
    last one followed by a path (of several errors in one message, the last's path stays)."""
    return _ECHOED_VALUE.sub(lambda m: "Value '…'" + (" at '" if m.group(1) else ""),
                             message)


MESSAGE_LOGGED_CHARS = 200
CONTENT_LOGGED_CHARS = 4000
# a quoted span: '..' (not an apostrophe inside a word), "..", `..`, [..], or a JSON object
_QUOTED = re.compile(r"(?<![A-Za-z])'[^']*'|\"[^\"]*\"|`[^`]*`|\[[^\]]*\]|\{.*\}", re.DOTALL)
# what a quoted span may be and stay: a path (messages.1.content, #/messages/0), an id
# (toolu_01AB), a field's name with a separator, a short index; not a bare word or a phrase
_NAMES_A_FIELD = re.compile(r"[A-Za-z#][\w.#/:\[\]-]{0,79}|\d{1,4}")
# in brackets, a bare name too: "extraneous key [cachePoint]" is how the schema validators
# behind Bedrock name a key; words said are quoted, not bracketed
_BRACKETED_NAME = re.compile(r"\[[A-Za-z_]\w{0,79}\]")


def logged_message(failure: Failure, *, content: bool) -> str:
    """What the log says of ``failure``'s message. Bedrock's own words about a request it
    refused can quote the request (the caller's words, a tool's arguments or result) in
    shapes ``without_echoed_values`` does not know: unless LOG_CONTENT is on, each quoted
    span that does not name a field is masked and the message is cut, so the line keeps
    what it says is wrong (the code, the field's path, the constraint) and drops what it
    quotes. With LOG_CONTENT it is whole but for phone and card numbers, as content is.
    Our own messages (network faults, timeouts) and a refusal of our credentials hold
    nothing of the request: they are kept, hints included."""
    if (not isinstance(failure.cause, BedrockHTTPError | StreamFault)
            or failure.kind == "credentials"):
        return failure.message
    if content:
        return _cut(redact(failure.message), CONTENT_LOGGED_CHARS, "")
    return _cut(_QUOTED.sub(_masked_unless_a_field, failure.message), MESSAGE_LOGGED_CHARS,
                "; LOG_CONTENT=true shows it")


def _masked_unless_a_field(match: re.Match[str]) -> str:
    quoted = match.group()
    inside = quoted[1:-1]
    if inside == "…" or (_NAMES_A_FIELD.fullmatch(inside) and not inside.isalpha()):
        return quoted
    if _BRACKETED_NAME.fullmatch(quoted):
        return quoted
    return f"{quoted[0]}…{quoted[-1]}"


def _cut(message: str, limit: int, hint: str) -> str:
    if len(message) <= limit:
        return message
    return f"{message[:limit].rstrip()}… (cut from {len(message)} characters{hint})"
