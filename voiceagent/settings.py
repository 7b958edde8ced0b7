"""Every setting, read once from the environment at start-up.

Problems are collected, not raised one by one: a deploy with three mistakes fails once, with a
message that lists all three and says what to set.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from voiceagent.errors import SettingsError

DEFAULT_MODEL = "us.amazon.nova-lite-v1:0"
BUNDLED_CONFIG = Path(__file__).parent / "bundled_config"
WS_URL_SHAPE = re.compile(r"wss?://[^/?#\s]+/[A-Za-z0-9._~-][A-Za-z0-9._~/-]*(\?[^#\s]*)?\Z")
# scheme and host (and port) only: the server adds /twiml, /action and /relay itself
HOST_AND_PORT = r"([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?"
PUBLIC_URL_SHAPE = re.compile(rf"https?://{HOST_AND_PORT}/?\Z")
SOURCE_CONFIG = Path(__file__).parent.parent / "config"
LOCAL_CONFIG = Path("config")          # relative: the folder the command starts in
MODULE_NAME = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$", re.ASCII)


class Settings(BaseModel):
    """Field aliases are the environment variable names (the original sample's, where it had
    one). Durations carry their unit in the name."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore")

    port: int = Field(3000, alias="PORT", ge=0, le=65535)
    host: str = Field("0.0.0.0", alias="HOST")     # a container must listen on all interfaces
    store: Literal["sqlite", "dynamodb"] = Field("sqlite", alias="STORE")
    llm: Literal["bedrock", "scripted"] = Field("bedrock", alias="LLM")
    data_dir: Path = Field(Path(".voiceagent"), alias="DATA_DIR")
    config_dir: Path | None = Field(None, alias="CONFIG_DIR")
    table_name: str | None = Field(None, alias="TABLE_NAME")
    aws_region: str | None = Field(None, alias="AWS_REGION")
    stack_use_case: str = Field("restaurantOrderingUseCase", alias="STACK_USE_CASE")
    model_identifier: str = Field(DEFAULT_MODEL, alias="MODEL_IDENTIFIER")
    ws_url: str | None = Field(None, alias="WS_URL")
    public_url: str | None = Field(None, alias="PUBLIC_URL")
    twilio_auth_token: str | None = Field(None, alias="TWILIO_AUTH_TOKEN", repr=False)
    twilio_account_sid: str | None = Field(None, alias="TWILIO_ACCOUNT_SID")
    validate_signatures: bool = Field(True, alias="VALIDATE_SIGNATURES")
    time_zone: str = Field("UTC", alias="TIME_ZONE")
    log_format: Literal["auto", "json", "console"] = Field("auto", alias="LOG_FORMAT")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", alias="LOG_LEVEL")
    log_content: bool = Field(False, alias="LOG_CONTENT")   # content in logs: debug, exceptions
    scripted_first_token_delay_ms: int = Field(250, alias="SCRIPTED_FIRST_TOKEN_DELAY_MS",
                                               ge=0, le=10_000)
    scripted_token_delay_ms: int = Field(25, alias="SCRIPTED_TOKEN_DELAY_MS", ge=0, le=2_000)
    max_tool_rounds: int = Field(4, alias="MAX_TOOL_ROUNDS", ge=1, le=20)
    # after a reply's first clause, tokens are held up to this long (or to the end of a
    # clause) and sent as one frame; 0 sends every token as it comes
    token_hold_ms: int = Field(100, alias="TOKEN_HOLD_MS", ge=0, le=1000)
    max_concurrent_turns: int = Field(400, alias="MAX_CONCURRENT_TURNS", ge=1, le=10_000)
    # TCP + proxy tunnel + TLS handshake; longest silence from Bedrock once it answers;
    # request sent -> the model's first output event, then tried again once (llm/bedrock.py),
    # at most the read timeout (the default is lowered to it, a value set above it refused),
    # and the longest silence after a text delta (mid-sentence, a stream that quiet is dead)
    bedrock_connect_timeout_s: float = Field(3.0, alias="BEDROCK_CONNECT_TIMEOUT_S", gt=0,
                                             le=60)
    bedrock_read_timeout_s: float = Field(10.0, alias="BEDROCK_READ_TIMEOUT_S", gt=0, le=300)
    bedrock_first_event_timeout_s: float = Field(3.0, alias="BEDROCK_FIRST_EVENT_TIMEOUT_S",
                                                 gt=0, le=300)
    store_threads: int = Field(32, alias="STORE_THREADS", ge=1, le=1024)
    # modules whose @tool functions are registered at start-up, comma-separated (docs/tools.md)
    tools_modules: tuple[str, ...] = Field((), alias="TOOLS")
    tool_threads: int = Field(16, alias="TOOL_THREADS", ge=1, le=1024)   # blocking=True tools
    session_ttl_s: int = Field(24 * 3600, alias="SESSION_TTL_S", ge=60)
    flush_timeout_s: float = Field(5.0, alias="FLUSH_TIMEOUT_S", gt=0, le=120)
    setup_timeout_s: float = Field(10.0, alias="SETUP_TIMEOUT_S", gt=0, le=120)
    # at most hypercorn's own message limit (server.HARD_FRAME_LIMIT), which closes the socket
    # (1009) above it: a larger value had no effect and said nothing
    max_frame_bytes: int = Field(64 * 1024, alias="MAX_FRAME_BYTES", ge=1024, le=1024 * 1024)
    demo: bool = Field(False, alias="DEMO")
    # GET /phone: a browser page that plays Twilio's side of a call (docs/phone.md); for
    # development only, so only on a loopback HOST (or with DEMO)
    phone_page: bool = Field(False, alias="PHONE_PAGE")
    reuse_port: bool = Field(False, alias="REUSE_PORT")   # several processes, one port
    twilio_shared_key_secret: str | None = Field(None, alias="TWILIO_SHARED_KEY_SECRET",
                                                 repr=False)   # HMAC-SHA256 webhook rules
    trust_proxy_headers: bool = Field(False, alias="TRUST_PROXY_HEADERS")
    max_calls: int = Field(200, alias="MAX_CALLS", ge=1, le=100_000)
    # items waiting for the store (~0.8 KB each): past it new calls are refused as over
    # capacity, so a long store outage ends in "busy" answers, not in a killed process
    write_backlog_max: int = Field(1_000_000, alias="WRITE_BACKLOG_MAX", ge=100,
                                   le=100_000_000)
    # ... and in memory (memory_budget.py): unset, 40 % of the container's memory limit,
    # shared by the WORKERS processes docker/entrypoint.sh starts in it
    write_backlog_max_mb: int | None = Field(None, alias="WRITE_BACKLOG_MAX_MB", ge=1,
                                             le=1_000_000)
    workers: int = Field(1, alias="WORKERS", ge=1, le=1024)
    # this process's number among them, from 0 (docker/entrypoint.sh): what a server says
    # once at start, not once per process, worker 0 says (unset_public_url.py)
    worker_index: int = Field(0, alias="WORKER_INDEX", ge=0, le=1023)
    # relay sockets accepted but without a resolved setup yet (each for SETUP_TIMEOUT_S at
    # most): their own budget, so sockets that never send setup cannot crowd out calls
    max_sockets_waiting: int = Field(50, alias="MAX_SOCKETS_WAITING", ge=1, le=100_000)
    over_capacity: Literal["twiml", "503"] = Field("twiml", alias="OVER_CAPACITY")
    max_call_duration_s: float = Field(3600.0, alias="MAX_CALL_DURATION_S", gt=0,
                                       le=4 * 3600)
    idle_reprompt_s: float = Field(20.0, alias="IDLE_REPROMPT_S", ge=0, le=600)
    max_reprompts: int = Field(2, alias="MAX_REPROMPTS", ge=0, le=10)
    max_history_messages: int = Field(200, alias="MAX_HISTORY_MESSAGES", ge=4, le=10_000)
    # the history's content sent with each request (~4 characters a token): input size adds
    # to every turn's first-token time, and past the model's context window Bedrock refuses
    max_history_chars: int = Field(100_000, alias="MAX_HISTORY_CHARS", ge=2_000,
                                   le=2_000_000)
    max_prompt_chars: int = Field(2000, alias="MAX_PROMPT_CHARS", ge=10, le=100_000)
    drain_timeout_s: float = Field(90.0, alias="DRAIN_TIMEOUT_S", ge=0, le=3600)
    end_grace_s: float = Field(10.0, alias="END_GRACE_S", ge=0, le=600)  # goodbye -> hung up
    ping_interval_s: float = Field(20.0, alias="PING_INTERVAL_S", ge=0, le=300)
    # an HTTP connection's idle time (and its next request's headers): see server.py
    http_idle_timeout_s: float = Field(310.0, alias="HTTP_IDLE_TIMEOUT_S", gt=0, le=3600)
    twilio_sms_from: str | None = Field(None, alias="TWILIO_SMS_FROM")   # sendConfirmationSms
    twilio_api_base_url: str | None = Field(None, alias="TWILIO_API_BASE_URL")  # tests, mocks
    # CloudWatch Embedded Metric Format lines on stdout; unset: on when METRICS_NAMESPACE is
    # set (the SAM template sets it, and scales on the ActiveCalls metric)
    metrics_emf: bool | None = Field(None, alias="METRICS_EMF")
    metrics_namespace: str | None = Field(None, alias="METRICS_NAMESPACE")
    metrics_service_name: str = Field("voiceagent", alias="METRICS_SERVICE_NAME")
    # GET /metrics answers only requests with "Authorization: Bearer <METRICS_TOKEN>"
    metrics_token: str | None = Field(None, alias="METRICS_TOKEN", repr=False)
    # ECS task scale-in protection while calls run (app/task_protection.py); "auto": on when
    # the ECS agent is there (ECS sets ECS_AGENT_URI in every container)
    task_protection: Literal["auto", "off"] = Field("auto", alias="TASK_PROTECTION")
    task_protection_idle_s: float = Field(30.0, alias="TASK_PROTECTION_IDLE_S", ge=0, le=3600)
    task_protection_max_minutes: int = Field(120, alias="TASK_PROTECTION_MAX_MINUTES", ge=1,
                                             le=2880)
    ecs_agent_uri: str | None = Field(None, alias="ECS_AGENT_URI")

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _any_case(cls, value: Any, info: ValidationInfo) -> Any:
        """``LOG_LEVEL=debug`` is as clear as DEBUG: it stopped start-up."""
        if not isinstance(value, str):
            return value
        return value.upper() if info.field_name == "log_level" else value.lower()

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("unknown time zone; use an IANA name such as "
                             "America/Los_Angeles") from None
        return value

    @field_validator("tools_modules", mode="before")
    @classmethod
    def _modules(cls, value: Any) -> Any:
        if not isinstance(value, str | list | tuple):
            return value                     # pydantic reports the type
        parts = value.split(",") if isinstance(value, str) else [str(v) for v in value]
        names = list(dict.fromkeys(part.strip() for part in parts if part.strip()))
        bad = [name for name in names if not MODULE_NAME.match(name)]
        if bad:
            raise ValueError(f"{', '.join(map(repr, bad))}: not a Python module name; list "
                             "modules to import, comma-separated (my_agent.tools,other.tools)")
        return tuple(names)

    @field_validator("ws_url")
    @classmethod
    def _wss(cls, value: str | None) -> str | None:
        if value and not value.startswith(("wss://", "ws://")):
            raise ValueError("must start with wss:// (Twilio only connects to wss)")
        if value and not WS_URL_SHAPE.match(value):
            # its path is the relay route, matched as the server reads it (decoded): a
            # %-escape or a space never matched, and every call's socket got a 404
            raise ValueError("must be wss://host[:port]/path (e.g. wss://agent.example.com/"
                             "relay), the path of letters, digits and - _ . ~ / only (it is "
                             "the relay route), and an optional ?query")
        return value

    @field_validator("public_url")
    @classmethod
    def _https(cls, value: str | None) -> str | None:
        if value and not value.startswith(("https://", "http://")):
            raise ValueError("must be the https:// base URL Twilio calls, e.g. "
                             "https://agent.example.com")
        if value and not PUBLIC_URL_SHAPE.match(value):
            host = re.split(r"[/?#]", value.split("://", 1)[1], maxsplit=1)[0]
            if not re.fullmatch(HOST_AND_PORT, host):
                raise ValueError(f"{value} has no host name in it; put your tunnel's or load "
                                 "balancer's host there, e.g. https://abc123.ngrok.app")
            # a pasted webhook URL: Twilio's would be .../twiml/twiml, every call a 403
            raise ValueError(f"must be the base URL only, scheme and host (e.g. "
                             f"https://agent.example.com), not {value}: the server adds "
                             "/twiml and /relay to it")
        return value.rstrip("/") if value else value

    @property
    def emf_enabled(self) -> bool:
        return self.metrics_emf if self.metrics_emf is not None else bool(
            self.metrics_namespace)

    @property
    def metrics_namespace_or_default(self) -> str:
        return self.metrics_namespace or "VoiceAgent"

    @property
    def resolved_config_dir(self) -> Path:
        """``CONFIG_DIR``, else ``./config`` when the current folder has one laid out like
        ours (a project made by ``voiceagent init``: its own use cases must never lose to
        voiceagent's examples), else ``packaged_config_dir()``. ``serve``, ``check`` and
        ``config load`` all read this, so they agree on what a deployment loads."""
        if self.config_dir is not None:
            return self.config_dir
        if (LOCAL_CONFIG / "usecases").is_dir():
            return LOCAL_CONFIG
        return packaged_config_dir()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build and check the settings; raise SettingsError listing every problem."""
        source = dict(os.environ if env is None else env)
        if "MODEL_IDENTIFIER" not in source and source.get("INFERENCE_PROFILE_ARN"):
            source["MODEL_IDENTIFIER"] = source["INFERENCE_PROFILE_ARN"]
        values: dict[str, Any] = {k: v for k, v in source.items() if v != ""}
        values.update(overrides)
        problems = _cross_checks(values)
        try:
            settings = cls.model_validate(values)
        except ValidationError as err:
            problems = [f"{_env_name(e['loc'])}: {e['msg'].removeprefix('Value error, ')}"
                        for e in err.errors()] + problems
        else:
            problems += _checks_of_values(settings)
        if problems:
            raise SettingsError(problems)
        return settings


def packaged_config_dir() -> Path:
    """voiceagent's own example use cases: the repository's ``config/`` (running from a
    checkout), else the copy in the wheel. Only a checkout's: installed, the folder beside the
    package is site-packages, where a ``config/`` would be some other distribution's."""
    checkout = (SOURCE_CONFIG.parent / "pyproject.toml").is_file()
    return SOURCE_CONFIG if checkout and SOURCE_CONFIG.is_dir() else BUNDLED_CONFIG


_TRUE = frozenset({"1", "true", "t", "yes", "y", "on"})


def _flag(value: Any, default: bool) -> bool:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in _TRUE     # pydantic's own: the field agrees


def _checks_of_values(settings: Settings) -> list[str]:
    """Rules that span settings, checked on their values once each is valid."""
    problems = []
    if settings.session_ttl_s < settings.max_call_duration_s:
        # a call's session item keeps the expiry it got when the call started, and its
        # conversation items theirs: removed mid-call, the call's handoff says goodbye
        # instead, and a reconnect is refused or resumes part of the conversation
        problems.append(
            f"SESSION_TTL_S: {settings.session_ttl_s} s is shorter than MAX_CALL_DURATION_S "
            f"({settings.max_call_duration_s:g} s), so a long call's items could expire while "
            "it runs (its handoff and reconnects would fail); make it at least as long")
    if ("bedrock_first_event_timeout_s" in settings.model_fields_set
            and settings.bedrock_first_event_timeout_s > settings.bedrock_read_timeout_s):
        problems.append(
            f"BEDROCK_FIRST_EVENT_TIMEOUT_S: {settings.bedrock_first_event_timeout_s:g} s is "
            f"longer than BEDROCK_READ_TIMEOUT_S ({settings.bedrock_read_timeout_s:g} s), "
            "which ends the wait for the first event anyway (with no retry); make it shorter, "
            "or raise BEDROCK_READ_TIMEOUT_S too")
    return problems


def _cross_checks(values: Mapping[str, Any]) -> list[str]:
    """Rules that span settings, checked on the raw values so they report with the rest."""
    problems = []
    if values.get("STORE", values.get("store")) == "dynamodb" and not values.get(
            "TABLE_NAME", values.get("table_name")):
        problems.append("TABLE_NAME: required when STORE=dynamodb (the DynamoDB table)")
    demo = _flag(values.get("DEMO", values.get("demo")), False)
    validate = _flag(values.get("VALIDATE_SIGNATURES", values.get("validate_signatures")), True)
    if validate and not demo and not values.get("TWILIO_AUTH_TOKEN",
                                                values.get("twilio_auth_token")):
        problems.append("TWILIO_AUTH_TOKEN: required to check Twilio's signatures; set it, "
                        "or run `voiceagent demo` for an offline try-out")
    host = str(values.get("HOST", values.get("host", "0.0.0.0")))
    if (_flag(values.get("PHONE_PAGE", values.get("phone_page")), False) and not demo
            and not is_loopback(host)):
        problems.append(f"PHONE_PAGE: the browser phone (/phone) is for development and is "
                        f"served only on a loopback HOST, not on {host!r}: set "
                        "HOST=127.0.0.1, or turn PHONE_PAGE off (voiceagent demo --web "
                        "serves it on 127.0.0.1)")
    if (_flag(values.get("PHONE_PAGE", values.get("phone_page")), False)
            and _flag(values.get("REUSE_PORT", values.get("reuse_port")), False)):
        problems.append("PHONE_PAGE: a page's call ticket lives in the process that served "
                        "the page, and with REUSE_PORT (WORKERS > 1) its socket may reach "
                        "another: run one process (WORKERS=1) for the browser phone")
    return problems


def is_loopback(host: str) -> bool:
    """``localhost``, or an address in 127.0.0.0/8 or ``::1`` (brackets allowed)."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _env_name(loc: tuple[int | str, ...]) -> str:
    name = str(loc[0]) if loc else "?"
    field = Settings.model_fields.get(name)
    return field.alias if field is not None and field.alias else name
