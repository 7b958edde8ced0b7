"""Every error voiceagent raises on purpose.

    VoiceAgentError
    ├── ConfigError            a use-case or profile file is wrong (path, key path, problem)
    ├── SettingsError          environment settings missing or invalid (all listed at once)
    ├── ListenError            HOST:PORT cannot be listened on (port in use, HOST not here)
    ├── RelayError
    │   ├── RelayProtocolError a frame from Twilio broke the protocol (type, field, problem)
    │   ├── RelayClosed        we closed the socket (end sent, teardown)
    │   └── RelayBroken        the peer went away (hang-up, network)
    ├── LLMError               the model failed; ``retryable`` says whether trying again may help
    │   ├── ModelThrottled
    │   ├── ModelUnavailable
    │   ├── ModelRejected      a ValidationException: the request (usually history) was refused
    │   │   └── ModelToolsRefused  a tool the use case offers: every turn fails alike
    │   └── ModelStreamFailed  the stream broke after it started
    ├── ToolError
    │   ├── ToolInputInvalid   arguments did not match the tool's JSON schema
    │   ├── ToolTimeout
    │   ├── ToolFailed         the tool raised
    │   └── ToolMessageRefused a tool asked to send what tools may not (a Text: the model speaks)
    └── StoreError             the store could not be reached or refused a write
        └── StoreRejected      it refused the item itself: trying again cannot help

Names say whose fault it was. Messages say what was wrong and what to do about it.
"""

from __future__ import annotations


class VoiceAgentError(Exception):
    """Base of every error raised on purpose."""


class ConfigError(VoiceAgentError):
    def __init__(self, path: str, key_path: str, problem: str) -> None:
        self.path = path
        self.key_path = key_path
        self.problem = problem
        where = f"{path}: {key_path}" if key_path else path
        super().__init__(f"{where}: {problem}")


class SettingsError(VoiceAgentError):
    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"cannot start, {len(problems)} setting(s) to fix:\n{lines}")


class ListenError(VoiceAgentError):
    """The server cannot open its port: the settings are valid, the machine says no."""

    def __init__(self, host: str, port: int, problem: str) -> None:
        self.host = host
        self.port = port
        self.problem = problem
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        super().__init__(f"cannot listen on {where}: {problem}")


class RelayError(VoiceAgentError):
    pass


class RelayProtocolError(RelayError):
    def __init__(self, frame_type: str, field: str, problem: str) -> None:
        self.frame_type = frame_type
        self.field = field
        self.problem = problem
        super().__init__(f"relay frame type={frame_type!r} field={field!r}: {problem}")


class RelayClosed(RelayError):
    """We closed the socket; sending after this is a bug in the caller of send()."""


class RelayBroken(RelayError):
    """The peer closed the socket or the network failed: a normal way for a call to end.
    ``dropped``: not the peer's normal close (1000, Twilio's after a hang-up or our ``end``)
    but a lost connection or an error code: the relay session failed, and Twilio asks
    ``/action`` whether to reconnect; counted apart from hang-ups. ``code``: the peer's close
    code when it sent one (1011: Twilio's side failed, its debugger says why; 1006: the
    connection was lost), for the log."""

    def __init__(self, message: str, *, dropped: bool = False, code: int | None = None) -> None:
        super().__init__(message)
        self.dropped = dropped
        self.code = code


class LLMError(VoiceAgentError):
    retryable: bool = False

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(f"{code}: {message}")


class ModelThrottled(LLMError):
    retryable = True


class ModelUnavailable(LLMError):
    retryable = True


class ModelRejected(LLMError):
    retryable = False


class ModelToolsRefused(ModelRejected):
    """The use case's tools, not this call's history: Bedrock refuses every request that
    offers them, so it is the model's state for that use case, logged once per episode."""


class ModelStreamFailed(LLMError):
    retryable = True

    def __init__(self, code: str, message: str, *, after_tokens: bool = False) -> None:
        self.after_tokens = after_tokens    # content already reached the caller: do not replay
        super().__init__(code, message)


class ToolError(VoiceAgentError):
    def __init__(self, tool: str, problem: str) -> None:
        self.tool = tool
        self.problem = problem
        super().__init__(f"tool {tool!r}: {problem}")


class ToolInputInvalid(ToolError):
    pass


class ToolTimeout(ToolError):
    pass


class ToolFailed(ToolError):
    pass


class ToolMessageRefused(ToolError):
    """``ToolContext.send`` got a message tools may not send; the tool's call fails with it."""


class StoreError(VoiceAgentError):
    pass


class StorePartlyWritten(StoreError):
    """Transient, but part of a ``put_many`` is stored: only the items keyed ``remaining``
    (pk, sk) are not. Sending the rest again would spend a throttled table's capacity on
    writes it already took, and prolong the throttling."""

    def __init__(self, message: str, remaining: list[tuple[str, str]]) -> None:
        super().__init__(message)
        self.remaining = remaining


class StoreRejected(StoreError):
    """The store refused an item as invalid (bad key, unsupported value, too large): trying
    again cannot help. Backends raise it for such items; any ``StoreError`` with a true
    ``permanent`` attribute is treated the same way."""

    permanent = True


def is_permanent(err: BaseException) -> bool:
    return bool(getattr(err, "permanent", False))
